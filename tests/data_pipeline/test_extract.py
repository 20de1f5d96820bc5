"""gpt-data extract on the real WARC / CCNet samples and on hand-built (and damaged) crawl files."""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib

import brotli
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from data_pipeline.extract import ExtractOptions
from data_pipeline.extract.warc import read_crawl_file
from data_pipeline.stats import Stats


def reference_responses(warc_gz) -> list[dict]:
    """HTTP 200 HTML responses of a WARC, parsed with gzip + regexes only (no fastwarc), with
    the compressed offset range of the gzip member holding each one."""
    data = warc_gz.read_bytes()
    members, offset = [], 0
    while offset < len(data):
        inflater = zlib.decompressobj(31)
        payload = inflater.decompress(data[offset:])
        end = len(data) - len(inflater.unused_data)
        members.append((offset, end, payload))
        offset = end
    found = []
    for start, end, payload in members:
        head, _, block = payload.partition(b"\r\n\r\n")
        fields = dict(re.findall(rb"^([\w-]+): ?(.*?)\r?$", head, re.M))
        if fields.get(b"WARC-Type") != b"response":
            continue
        http_head = block.split(b"\r\n\r\n", 1)[0]
        status = http_head.split(b"\r\n", 1)[0].split()[1]
        ctype = re.search(rb"(?im)^content-type: *([^;\r\n]+)", http_head)
        if status == b"200" and ctype and ctype.group(1).strip().lower() == b"text/html":
            found.append({"url": fields[b"WARC-Target-URI"].decode().strip("<>"),
                          "id": fields[b"WARC-Record-ID"].decode().strip("<>"),
                          "date": fields[b"WARC-Date"].decode(), "member": (start, end)})
    return found


def test_real_warc_yields_every_html_response_with_its_text(cli, h, tmp_path, warc_sample):
    code, _, err = cli("extract", "--input", warc_sample, "--output", tmp_path / "out")
    assert code == 0, err
    rows = h.read_rows(tmp_path / "out")
    expected = reference_responses(warc_sample)
    assert len(expected) == 22
    assert [(r["url"], r["id"], r["crawl_date"]) for r in rows] == [(e["url"], e["id"], e["date"]) for e in expected]
    assert all(r["source"] == "common-crawl" and r["language"] is None for r in rows)
    by_url = {r["url"]: r["text"] for r in rows}
    assert "My name is Luca Soldaini and I use they/them pronouns." in by_url["https://soldaini.net/"]
    pip_page = by_url["https://maria-antoniak.github.io/2020/03/25/pip.html"]
    assert pip_page.startswith("Make Your Project Pippable\n\nThis is a no nonsense guide to making your "
                               "Python project installable via pip.")
    assert "<" not in pip_page.split("\n")[0] and "function(" not in pip_page  # no markup, no scripts
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["documents_out"] == 22 and stats["records_in"] == 22 and stats["shards_done"] == 1
    assert stats["bytes_out"] == sum(len(t.encode()) for t in by_url.values())


def test_main_content_drops_boilerplate_that_all_text_keeps(h, tmp_path, warc_sample):
    stats = Stats()
    main = {d.url: d.text for d in read_crawl_file(warc_sample, stats)}
    full = {d.url: d.text for d in read_crawl_file(warc_sample, stats, ExtractOptions(main_content=False))}
    assert main.keys() == full.keys()
    assert sum(map(len, main.values())) < sum(map(len, full.values()))
    # the main text is still all there
    assert "My name is Luca Soldaini" in full["https://soldaini.net/"]


def test_charsets_are_decoded_like_a_browser(cli, h, tmp_path):
    german = "<html><body><p>Grüße aus Köln – “Anführungszeichen” und Äpfel.</p></body></html>"
    russian = ("<html><body><p>Привет, мир! Это простой тестовый документ на русском языке, "
               "написанный в кодировке Windows-1251 без объявления кодировки.</p></body></html>")
    cases = {
        # ISO-8859-1 label on cp1252 bytes (the WHATWG mapping makes – and “” decode correctly)
        "http://a.example/latin": (german.encode("cp1252"), "text/html; charset=iso-8859-1", "Grüße aus Köln – “"),
        # UTF-8 bytes mislabelled as ISO-8859-1
        "http://a.example/mislabelled": (german.encode(), "text/html; charset=ISO-8859-1", "Grüße aus Köln – “"),
        # no label at all: detected
        "http://a.example/cp1251": (russian.encode("cp1251"), "text/html", "Привет, мир!"),
        # a label no codec knows
        "http://a.example/bogus": (russian.encode("cp1251"), "text/html; charset=x-no-such-charset", "Привет, мир!"),
        "http://a.example/sjis": ("<p>日本語のテキストです。</p>".encode("shift_jis"), "text/html; charset=Shift_JIS",
                                  "日本語のテキストです。"),
    }
    records = [h.warc_record("response", url, h.http_response(body, ctype), "application/http; msgtype=response")
               for url, (body, ctype, _) in cases.items()]
    h.write_warc(tmp_path / "charsets.warc.gz", records)
    code, _, err = cli("extract", "--input", tmp_path / "charsets.warc.gz", "--output", tmp_path / "out")
    assert code == 0, err
    texts = {r["url"]: r["text"] for r in h.read_rows(tmp_path / "out")}
    for url, (_, _, expected) in cases.items():
        assert expected in texts[url], url
    assert "\ufffd" not in "".join(texts.values())


def test_unusable_records_are_skipped_and_counted(cli, h, tmp_path):
    page = b"<html><body><p>A perfectly normal paragraph of text that should be kept.</p></body></html>"
    response = "application/http; msgtype=response"
    records = [
        h.warc_record("warcinfo", "", b"software: test\r\n", "application/warc-fields"),
        h.warc_record("request", "http://b.example/", b"GET / HTTP/1.1\r\n\r\n", "application/http; msgtype=request"),
        h.warc_record("response", "http://b.example/", h.http_response(page), response),
        h.warc_record("response", "http://b.example/logo.png", h.http_response(b"\x89PNG\r\n\x1a\n" + bytes(200),
                                                                               "image/png"), response),
        h.warc_record("response", "http://b.example/gone", h.http_response(page, status="404 Not Found"), response),
        h.warc_record("response", "http://b.example/huge", h.http_response(b"<p>" + b"word " * 3000 + b"</p>"),
                      response),
        h.warc_record("response", "http://b.example/script", h.http_response(b"<script>var x=1;</script>"), response),
    ]
    h.write_warc(tmp_path / "mixed.warc.gz", records)
    code, _, err = cli("extract", "--input", tmp_path / "mixed.warc.gz", "--output", tmp_path / "out",
                       "--max-record-bytes", "10000")
    assert code == 0, err
    assert [r["url"] for r in h.read_rows(tmp_path / "out")] == ["http://b.example/"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"] == {"not_html": 1, "http_status_not_200": 1, "too_large": 1, "empty_text": 1}
    assert stats["records_in"] == 5 and stats["documents_out"] == 1


def test_damaged_warc_keeps_everything_outside_the_damage(cli, h, tmp_path, warc_sample):
    expected = reference_responses(warc_sample)
    data = warc_sample.read_bytes()
    hit_start, hit_end = expected[4]["member"]  # garbage inside the 5th response's gzip member
    last_start, last_end = expected[-1]["member"]  # and the file cut off inside the last one
    middle = (hit_start + hit_end) // 2
    damaged = (data[:middle] + os.urandom(3000) + data[middle:last_start]
               + data[last_start:(last_start + last_end) // 2])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "damaged.warc.gz").write_bytes(damaged)
    (tmp_path / "in" / "empty.warc.gz").write_bytes(b"")
    (tmp_path / "in" / "noise.warc.gz").write_bytes(os.urandom(5000))
    code, _, err = cli("extract", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2, err  # the cut file is not done
    assert "Traceback" not in err and "error: 1 shard(s) have an input that ends early (first: damaged;" in err
    urls = [r["url"] for r in h.read_rows(tmp_path / "out" / "damaged.parquet")]
    assert urls == [e["url"] for e in expected[:4] + expected[5:-1]]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"]["corrupt_region"] == 2  # the garbage and the noise file
    assert stats["skipped"]["truncated_record"] == stats["skipped"]["truncated_file"] == 1
    assert stats["skipped"]["empty_file"] == 1
    assert stats["shards_done"] == 2 and stats["shards_incomplete"] == 1 and stats["documents_out"] == 20


def test_wet_conversion_records_pass_through(cli, h, tmp_path):
    texts = {"http://c.example/one": "First document.\nIt has two lines.",
             "http://c.example/two": "Second document, with ünïcödé."}
    records = [h.warc_record("warcinfo", "", b"software: test\r\n", "application/warc-fields")]
    records += [h.warc_record("conversion", url, text.encode(), "text/plain") for url, text in texts.items()]
    h.write_warc(tmp_path / "sample.warc.wet.gz", records)
    code, _, err = cli("extract", "--input", tmp_path / "sample.warc.wet.gz", "--output", tmp_path / "out")
    assert code == 0, err
    rows = h.read_rows(tmp_path / "out" / "sample.parquet")
    assert {r["url"]: r["text"] for r in rows} == texts
    assert all(r["crawl_date"] == "2024-01-02T03:04:05Z" for r in rows)


def test_ccnet_jsonl_becomes_parquet_with_its_fields(cli, h, tmp_path, ccnet_sample):
    code, _, err = cli("extract", "--input", ccnet_sample, "--output", tmp_path / "out")
    assert code == 0, err
    with gzip.open(ccnet_sample, "rt") as f:
        source = [json.loads(line) for line in f]
    rows = h.read_rows(tmp_path / "out")
    assert len(rows) == len(source) == 10
    for row, doc in zip(rows, source):
        assert row["text"] == doc["text"] and row["id"] == doc["id"]
        assert row["url"] == doc["metadata"]["url"]
        assert row["crawl_date"] == doc["metadata"]["date_download"]
        assert row["language"] == doc["metadata"]["language"]
        assert row["language_score"] == pytest.approx(doc["metadata"]["language_score"])


def test_missing_input_is_one_clear_line(cli, tmp_path):
    code, _, err = cli("extract", "--input", tmp_path / "nope", "--output", tmp_path / "out")
    assert code == 2
    assert err.strip() == f"gpt-data extract: error: input path does not exist: {tmp_path / 'nope'}"


PAGE = ("<html><head><title>Homepage - Creative Commons</title></head><body><main>"
        + "".join(f"<p>Paragraph {i}: Creative Commons licenses give everyone a simple, standardized way "
                  f"to grant permission to share and use creative work.</p>" for i in range(12))
        + "</main></body></html>").encode()


def chunked(body: bytes, cuts: list[int]) -> bytes:
    """`body` in HTTP/1.1 chunked transfer encoding, split at `cuts`."""
    bounds = [0, *sorted(cuts), len(body)]
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def write_warc(path, responses: list[tuple], version: str = "1.1", extra=()) -> None:
    """A WARC written by warcio (gzipped per record if `path` ends in .gz): `responses` are
    (uri, payload, [(header, value)]) with the payload stored as given, plus `extra(writer)` records."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=str(path).endswith(".gz"), warc_version=version)
        for uri, payload, headers in responses:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"), *headers],
                                    protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(payload),
                                                          http_headers=http))
        for make in extra:
            writer.write_record(make(writer))


def test_encoded_bodies_give_the_text_of_the_plain_page(tmp_path):
    word = PAGE.index(b"Commons licenses") + 3  # a chunk boundary inside "Commons" and inside a tag
    gz = gzip.compress(PAGE)
    encoded = {
        "chunked": (chunked(PAGE, [word, PAGE.index(b"<main>") + 2, 3000]), [("Transfer-Encoding", "chunked")]),
        "gzip": (gz, [("Content-Encoding", "gzip")]),
        "gzip+chunked": (chunked(gz, [len(gz) // 3, len(gz) // 2]),
                         [("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]),
        "deflate": (zlib.compress(PAGE), [("Content-Encoding", "deflate")]),
        "raw-deflate": (zlib.compress(PAGE)[2:-4], [("Content-Encoding", "deflate")]),
        "br": (brotli.compress(PAGE), [("Content-Encoding", "br")]),
        "br-of-gzip": (brotli.compress(gz), [("Content-Encoding", "gzip, br")]),
    }
    broken = {"cut-gzip": (gz[: len(gz) // 2], [("Content-Encoding", "gzip")]),
              "compress": (PAGE, [("Content-Encoding", "compress")]),
              "bad-chunk": (b"zz\r\n" + PAGE, [("Transfer-Encoding", "chunked")])}
    image = lambda w: w.create_warc_record(  # noqa: E731
        "http://cc.example/logo.png", "response", payload=io.BytesIO(gzip.compress(bytes(300))),
        http_headers=StatusAndHeaders("200 OK", [("Content-Type", "image/png"), ("Content-Encoding", "gzip")],
                                      protocol="HTTP/1.1"))
    revisit = lambda w: w.create_revisit_record(  # noqa: E731
        "http://cc.example/plain", "sha1:AAAA", "http://cc.example/plain", "2024-01-01T00:00:00Z")
    for version in ("1.0", "1.1"):
        stats = Stats()
        path = tmp_path / f"v{version}.warc.gz"
        write_warc(path, [("http://cc.example/plain", PAGE, [])]
                   + [(f"<http://cc.example/{name}>", body, headers) for name, (body, headers) in encoded.items()]
                   + [(f"http://cc.example/{name}", body, headers) for name, (body, headers) in broken.items()]
                   + [("http://cc.example/after", PAGE, [])], version, extra=[image, revisit])
        texts = {d.url: d.text for d in read_crawl_file(path, stats)}
        reference = texts.pop("http://cc.example/plain")
        assert reference.startswith("Paragraph 0: Creative Commons licenses give") and "Paragraph 11:" in reference
        assert texts == {f"http://cc.example/{name}": reference for name in [*encoded, "after"]}, version
        assert stats.get("skipped") == {"undecodable_encoding": 3, "not_html": 1}
        assert stats.get("records_in") == 2 + len(encoded) + len(broken) + 1


@pytest.mark.parametrize("suffix, where", [(".warc.gz", "gzip trailer"), (".warc.gz", "last record"),
                                           (".warc.gz", "last response"), (".warc", "last record"),
                                           (".warc", "last response")])
def test_truncated_file_keeps_its_records_and_is_redone_with_the_full_file(cli, h, tmp_path, suffix, where):
    full = tmp_path / f"full{suffix}"
    write_warc(full, [(f"http://cc.example/{i}", PAGE.replace(b"Paragraph", b"Part %d" % i), [])
                      for i in range(3)], extra=[lambda w: w.create_warc_record("http://cc.example/2", "metadata")])
    data = full.read_bytes()
    start = b"\x1f\x8b\x08" if suffix == ".warc.gz" else b"WARC/1.1\r\n"
    metadata = data.rfind(start)
    cut = {"gzip trailer": len(data) - 5, "last record": (metadata + len(data)) // 2,
           "last response": (data.rfind(start, 0, metadata) + metadata) // 2}[where]
    (tmp_path / "in").mkdir()
    crawl = tmp_path / "in" / f"crawl{suffix}"
    crawl.write_bytes(data[:cut])
    code, _, err = cli("extract", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2
    assert "1 incomplete" in err and "truncated_file=1" in err
    assert err.strip().splitlines()[-1].startswith("gpt-data extract: error: 1 shard(s) have an input that ends "
                                                   "early (first: crawl;")
    kept = 2 if where == "last response" else 3
    assert [r["url"] for r in h.read_rows(tmp_path / "out")] == [f"http://cc.example/{i}" for i in range(kept)]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"]["truncated_file"] == 1
    assert stats["shards_done"] == 0 and stats["shards_incomplete"] == 1 and stats["documents_out"] == kept
    crawl.write_bytes(data)  # the download completed: no --overwrite needed
    code, _, err = cli("extract", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 0, err
    assert len(h.read_rows(tmp_path / "out")) == 3
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["shards_done"] == 1 and "skipped" not in stats and "shards_incomplete" not in stats
