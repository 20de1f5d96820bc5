"""Remote inputs and outputs of gpt-data: real servers started here (an HTTP server that can
inject faults, moto's S3 server) read and written through fsspec, compared with local runs."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import re
import threading
from pathlib import Path

import fsspec.config
import numpy as np
import pyarrow as pa
import pytest
import xxhash

import dedup_corpus as dc
from data_pipeline import indexed, remote


class Site:
    """A threaded HTTP/1.1 server of in-memory files with Range support and ETags. Faults:
    `drop_once` paths send half of their first GET's body and close the connection,
    `fail_once` paths answer their first GET with 503, `fail_always` paths answer every request with 503."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.fail_once: set[str] = set()
        self.fail_always: set[str] = set()
        self.gets: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.respond(with_body=False)

            def do_GET(self):
                site.gets.append(self.path)
                self.respond(with_body=True)

            def respond(self, with_body: bool):
                path = self.path
                if path in site.fail_always or (with_body and path in site.fail_once):
                    site.fail_once.discard(path)
                    return self.empty(503)
                data = site.files.get(path)
                if data is None:
                    return self.empty(404)
                start, end = 0, len(data)
                wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if wanted:
                    start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1) + 1, len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
                self.end_headers()
                if not with_body:
                    return
                if path in site.drop_once:
                    site.drop_once.discard(path)
                    self.wfile.write(data[start:(start + end) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:end])

            def empty(self, status: int):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


CRAWL = ["seg-b/sample-b.warc.gz", "seg-d/sample-d.warc.gz", "seg-a/sample-a.warc.gz", "seg-c/sample-c.warc.gz"]
"""Manifest order, on purpose not sorted: the manifest's order assigns shards to ranks."""


@pytest.fixture(scope="module")
def site(warc_sample):
    site = Site()
    for path in CRAWL:
        site.files[f"/crawl-data/{path}"] = warc_sample.read_bytes()
    site.files["/crawl-data/warc.paths.gz"] = gzip.compress("".join(f"{p}\n" for p in CRAWL).encode())
    yield site
    site.server.shutdown()


@pytest.fixture(scope="module")
def local_run(warc_sample, tmp_path_factory):
    """The reference: extract of the local WARC file."""
    from data_pipeline.cli import main

    out = tmp_path_factory.mktemp("local")
    assert main(["extract", "--input", str(warc_sample), "--output", str(out)]) == 0
    return out / "cc-sample-0000.parquet"


@pytest.fixture(autouse=True)
def quick_backoff_and_private_locks(monkeypatch, tmp_path):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    monkeypatch.setattr(remote, "LOCK_ROOT", tmp_path / "locks")  # a remote output's local lock files
    monkeypatch.setattr(remote, "WORK_ROOT", tmp_path / "work")  # and its local work directories


def marker(out: Path, name: str) -> dict | None:
    path = out / ".done" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_extract_of_a_url_equals_extract_of_the_local_file(cli, h, tmp_path, site, local_run):
    url = f"{site.url}/crawl-data/{CRAWL[0]}"
    code, _, err = cli("extract", "--input", url, "--output", tmp_path)
    assert code == 0, err
    assert h.read_rows(tmp_path / "sample-b.parquet") == h.read_rows(local_run)
    assert (tmp_path / "sample-b.parquet").read_bytes() == local_run.read_bytes()
    data = site.files[f"/crawl-data/{CRAWL[0]}"]
    assert marker(tmp_path, "sample-b")["made_from"]["input"] == {
        "url": url, "size": len(data), "etag": f'"{hashlib.md5(data).hexdigest()}"'}


def test_jsonl_and_parquet_urls_read_like_local_files(cli, h, tmp_path, site, ccnet_sample, local_run):
    for sample in (ccnet_sample, local_run):
        site.files[f"/docs/{sample.name}"] = sample.read_bytes()
        assert cli("extract", "--input", sample, "--output", tmp_path / "local")[0] == 0
        code, _, err = cli("extract", "--input", f"{site.url}/docs/{sample.name}", "--output", tmp_path / "remote")
        assert code == 0, err
        name = sample.name.split(".")[0] + ".parquet"
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
        assert h.read_rows(tmp_path / "remote" / name)


def test_tokenize_of_a_url_writes_the_bytes_of_the_local_run(cli, tmp_path, site, ccnet_sample):
    site.files[f"/docs/{ccnet_sample.name}"] = ccnet_sample.read_bytes()
    assert cli("tokenize", "--input", ccnet_sample, "--output", tmp_path / "local" / "cc", "--tokenizer", "gpt2")[0] == 0
    code, _, err = cli("tokenize", "--input", f"{site.url}/docs/{ccnet_sample.name}",
                       "--output", tmp_path / "remote" / "cc", "--tokenizer", "gpt2")
    assert code == 0, err
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "remote" / f"cc{suffix}").read_bytes() == (tmp_path / "local" / f"cc{suffix}").read_bytes()


def test_throttling_and_server_errors_of_s3_are_retried_access_errors_are_not():
    """As s3fs raises them after its own retries: an OSError caused by botocore's ClientError."""
    from botocore.exceptions import ClientError, ReadTimeoutError

    def s3_error(code: str, status: int) -> OSError:
        err = OSError(f"{code} from S3")
        err.__cause__ = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
        return err

    assert remote.transient(s3_error("SlowDown", 503)) and remote.transient(s3_error("InternalError", 500))
    assert remote.transient(ReadTimeoutError(endpoint_url="http://s3"))
    assert not remote.transient(s3_error("AccessDenied", 403)) and not remote.transient(s3_error("NoSuchKey", 404))


def test_manifest_limit_sample_and_ranks_follow_the_manifest_order(cli, tmp_path, site, monkeypatch):
    manifest = f"{site.url}/crawl-data/warc.paths.gz"
    base = f"{site.url}/crawl-data/"
    names = [Path(p).name.removesuffix(".warc.gz") for p in CRAWL]

    code, _, err = cli("extract", "--input", manifest, "--base-url", base, "--limit", 2, "--output", tmp_path / "limit")
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "limit").glob("*.parquet")) == sorted(names[:2])

    kept = [n for p, n in zip(CRAWL, names) if xxhash.xxh64_intdigest(p.encode()) < 0.5 * 2**64]
    assert 0 < len(kept) < len(CRAWL)  # the fraction really selects
    code, _, err = cli("extract", "--input", manifest, "--base-url", base, "--sample", 0.5, "--output", tmp_path / "half")
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "half").glob("*.parquet")) == sorted(kept)

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    code, _, err = cli("extract", "--input", manifest, "--base-url", base, "--output", tmp_path / "rank1")
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "rank1").glob("*.parquet")) == sorted([names[1], names[3]])
    assert json.loads((tmp_path / "rank1" / "stats.json").read_text())["shards_total"] == 4


def test_a_dropped_transfer_and_a_503_are_retried_without_duplicates(cli, h, tmp_path, site, local_run):
    dropped, refused = (f"/crawl-data/{p}" for p in CRAWL[:2])
    site.drop_once.add(dropped)
    site.fail_once.add(refused)
    gets_before = list(site.gets)
    code, _, err = cli("extract", "--input", f"{site.url}/crawl-data/warc.paths.gz", "--base-url",
                       f"{site.url}/crawl-data", "--limit", 2, "--output", tmp_path)
    assert code == 0, err
    assert err.count("retry 1/3") == 2
    new_gets = site.gets[len(gets_before):]
    assert new_gets.count(dropped) >= 2 and new_gets.count(refused) >= 2
    for name in ("sample-b", "sample-d"):
        assert h.read_rows(tmp_path / f"{name}.parquet") == h.read_rows(local_run)  # 22 rows each, none twice
        assert marker(tmp_path, name) is not None


def test_a_shard_that_keeps_failing_is_recorded_failed_and_the_next_run_completes_it(cli, tmp_path, site, local_run):
    broken = f"/crawl-data/{CRAWL[2]}"
    args = ("extract", "--input", f"{site.url}/crawl-data/warc.paths.gz", "--base-url", f"{site.url}/crawl-data",
            "--output", tmp_path)
    site.fail_always.add(broken)
    try:
        code, _, err = cli(*args)
    finally:
        site.fail_always.discard(broken)
    assert code == 2 and "1 shard(s) failed and are not marked done (first: sample-a" in err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["shards_failed"] == 1 and list(stats["failed"]) == ["sample-a"]
    assert stats["shards_done"] == 3
    assert marker(tmp_path, "sample-a") is None and not (tmp_path / "sample-a.parquet").exists()

    code, _, err = cli(*args)
    assert code == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["shards_done"] == 4 and "failed" not in stats
    assert (tmp_path / "sample-a.parquet").read_bytes() == local_run.read_bytes()


def test_a_changed_object_is_redone_and_an_unchanged_one_is_not(cli, h, tmp_path, site, warc_sample):
    first, second = (f"/crawl-data/{p}" for p in CRAWL[:2])
    args = ("extract", "--input", f"{site.url}/crawl-data/warc.paths.gz", "--base-url", f"{site.url}/crawl-data",
            "--limit", 2, "--output", tmp_path)
    assert cli(*args)[0] == 0
    page = h.warc_record("response", "https://example.com/new", h.http_response(b"<html><body><p>A new page "
                                                                                  b"about rivers.</p></body></html>"),
                         "application/http; msgtype=response")
    site.files[second] = warc_sample.read_bytes() + gzip.compress(page)
    try:
        code, _, err = cli(*args)
        assert code == 2 and "input files changed" in err  # nothing finished is replaced without --overwrite
        gets_before = list(site.gets)
        code, _, err = cli(*args, "--overwrite")
        assert code == 0, err
    finally:
        site.files[second] = warc_sample.read_bytes()
    new_gets = site.gets[len(gets_before):]
    assert second in new_gets and first not in new_gets
    assert len(h.read_rows(tmp_path / "sample-d.parquet")) == 23
    assert marker(tmp_path, "sample-d")["made_from"]["input"]["size"] == len(warc_sample.read_bytes()) + len(gzip.compress(page))


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port, reached through fsspec's config; worker processes
    read it from the environment, as a user would set it (FSSPEC_S3_ENDPOINT_URL etc.)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(fsspec.config.conf, "s3", options)
        for key, value in options.items():
            patch.setenv(f"FSSPEC_S3_{key.upper()}", value)
        fs = fsspec.filesystem("s3")
        fs.mkdir("corpus")
        yield fs
    server.stop()


def test_s3_input_and_output_equal_the_local_run_byte_for_byte(cli, s3, warc_sample, local_run):
    s3.put(str(warc_sample), "corpus/crawl/cc-sample-0000.warc.gz")
    code, _, err = cli("extract", "--input", "s3://corpus/crawl", "--output", "s3://corpus/docs")
    assert code == 0, err
    assert s3.cat("corpus/docs/cc-sample-0000.parquet") == local_run.read_bytes()
    done = json.loads(s3.cat("corpus/docs/.done/cc-sample-0000.json"))
    assert done["made_from"]["input"]["url"] == "s3://corpus/crawl/cc-sample-0000.warc.gz"
    assert json.loads(s3.cat("corpus/docs/stats.json"))["shards_done"] == 1

    code, _, err = cli("extract", "--input", "s3://corpus/crawl", "--output", "s3://corpus/docs")
    assert code == 0 and "(0 this run, 1 already done)" in err


def test_filter_reads_and_writes_s3_like_local_files(cli, s3, tmp_path, local_run):
    s3.put(str(local_run), "corpus/extracted/cc-sample-0000.parquet")
    code, _, err = cli("filter", "--input", "s3://corpus/extracted", "--output", "s3://corpus/kept")
    assert code == 0, err
    assert cli("filter", "--input", local_run, "--output", tmp_path)[0] == 0
    for name in ("cc-sample-0000.parquet", "removed/cc-sample-0000.parquet"):
        assert s3.cat(f"corpus/kept/{name}") == (tmp_path / name).read_bytes()


def test_a_command_writing_local_files_refuses_a_url_output_in_one_line(tmp_path, monkeypatch):
    """mixture, classifier/tokenizer train, report: a URL output (also as a Path's parent, `s3:/corpus`) is one
    line, and no local `s3:` directory is made."""
    from common.errors import UserError
    from common.files import output_directory

    monkeypatch.chdir(tmp_path)
    for output in ("s3://corpus/run", Path("s3://corpus/blend.json").parent):
        with pytest.raises(UserError, match=r"^--output s3:/+corpus(/run)?: this command writes local files only$"):
            output_directory(output)
    assert list(tmp_path.iterdir()) == []
    assert output_directory(tmp_path / "local") == tmp_path / "local"


def tokenize_inputs(directory: Path, ccnet_sample: Path, local_run: Path) -> Path:
    """Two shards: CCNet JSONL, and the extracted parquet with a quality score per document."""
    import pyarrow.parquet as pq

    directory.mkdir()
    (directory / ccnet_sample.name).write_bytes(ccnet_sample.read_bytes())
    table = pq.read_table(local_run)
    pq.write_table(table.append_column("quality", pa.array([i / 32 for i in range(table.num_rows)], pa.float32())),
                   directory / "scored.parquet")
    return directory


@pytest.mark.parametrize("workers", [1, 2])
def test_tokenize_writes_to_s3_the_bytes_of_the_local_run(cli, s3, tmp_path, ccnet_sample, local_run, workers,
                                                           monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the worker processes' remote.CACHE_ROOT
    inputs = tokenize_inputs(tmp_path / "in", ccnet_sample, local_run)
    assert cli("tokenize", "--input", inputs, "--output", tmp_path / "cc")[0] == 0
    code, _, err = cli("tokenize", "--input", inputs, "--output", f"s3://corpus/tokens{workers}/cc",
                       "--workers", workers)
    assert code == 0, err
    for suffix in (".bin", ".idx", ".quality.npy"):
        assert s3.cat(f"corpus/tokens{workers}/cc{suffix}") == (tmp_path / f"cc{suffix}").read_bytes(), suffix
    summary = json.loads(s3.cat(f"corpus/tokens{workers}/cc.stats.json"))["summary"]
    assert summary == json.loads((tmp_path / "cc.stats.json").read_text())["summary"]
    assert summary["shard_names"] == ["ccnet-head-0091", "scored"] and summary["documents"] > 22
    assert not s3.exists(f"corpus/tokens{workers}/cc.parts")  # the work dir is removed after the merge, as locally

    code, _, err = cli("tokenize", "--input", inputs, "--output", f"s3://corpus/tokens{workers}/cc")
    assert code == 0 and "already complete for these 2 shard(s)" in err


def test_a_failed_tokenize_shard_leaves_no_object_and_no_marker_on_s3(cli, s3, tmp_path, ccnet_sample, local_run):
    import pyarrow.parquet as pq

    inputs = tokenize_inputs(tmp_path / "in", ccnet_sample, local_run)
    pq.write_table(pa.table({"body": ["no text column"]}), inputs / "broken.parquet")
    code, _, err = cli("tokenize", "--input", inputs, "--output", "s3://corpus/failing/cc")
    assert code == 2 and "broken: " in err and "no column 'text'" in err
    parts = "corpus/failing/cc.parts"
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.find(parts)) == [
        "ccnet-head-0091.bin", "ccnet-head-0091.idx", "ccnet-head-0091.json",
        "scored.bin", "scored.idx", "scored.json", "scored.quality.npy", "stats.json"]
    assert not s3.exists("corpus/failing/cc.bin") and not s3.exists("corpus/failing/cc.idx")
    assert not s3.call_s3("list_multipart_uploads", Bucket="corpus").get("Uploads")  # the .bin upload was aborted


def test_a_token_shard_streams_to_s3_in_parts(s3, tmp_path, monkeypatch):
    """A .bin larger than the upload block goes out while it is written (memory stays at one
    block), and is visible only once the .idx follows."""
    monkeypatch.setitem(fsspec.config.conf["s3"], "default_block_size", 5 << 20)  # S3's smallest part
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 4000, size=2000)
    tokens = rng.integers(0, 50257, size=int(lengths.sum()) * 2, dtype=np.uint16)  # 2 x 8 MB
    halves = (tokens[:tokens.size // 2], tokens[tokens.size // 2:])
    with indexed.TokenShardWriter(tmp_path / "local", np.uint16) as writer:
        for half in halves:
            writer.add_array(half, lengths)
    with indexed.TokenShardWriter("s3://corpus/streamed/t", np.uint16) as writer:
        writer.add_array(halves[0], lengths)
        uploads = s3.call_s3("list_multipart_uploads", Bucket="corpus").get("Uploads", [])
        assert [u["Key"] for u in uploads] == ["streamed/t.bin"]
        parts = s3.call_s3("list_parts", Bucket="corpus", Key="streamed/t.bin", UploadId=uploads[0]["UploadId"])
        assert len(parts["Parts"]) >= 1 and not s3.exists("corpus/streamed/t.bin")
        writer.add_array(halves[1], lengths)
    for suffix in (".bin", ".idx"):
        assert s3.cat(f"corpus/streamed/t{suffix}") == (tmp_path / f"local{suffix}").read_bytes()
    assert indexed.read_index("s3://corpus/streamed/t").tokens == tokens.size


def test_a_failed_shard_leaves_nothing_on_s3(cli, s3, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["no id or text column"]}), tmp_path / "bad.parquet")
    s3.put(str(tmp_path / "bad.parquet"), "corpus/bad/bad.parquet")
    code, _, err = cli("extract", "--input", "s3://corpus/bad", "--output", "s3://corpus/bad-out")
    assert code == 2 and "no 'id' or 'text' column" in err
    assert not s3.exists("corpus/bad-out/bad.parquet") and not s3.exists("corpus/bad-out/.done/bad.json")
    assert not s3.call_s3("list_multipart_uploads", Bucket="corpus").get("Uploads")  # the upload was aborted
    assert list(json.loads(s3.cat("corpus/bad-out/stats.json"))["failed"]) == ["bad"]


def published_files(local: Path) -> list[str]:
    """The parquet files a reader of the output sees (not the work directory)."""
    return sorted(p.relative_to(local).as_posix() for p in local.rglob("*.parquet") if ".dedup" not in p.parts)


def assert_same_output(s3, url: str, local: Path, *sections: str) -> None:
    """Every published shard byte-equal, and stats.json's counts and `sections` equal."""
    prefix = url.removeprefix("s3://")
    assert published_files(local)
    for name in published_files(local):
        assert s3.cat(f"{prefix}/{name}") == (local / name).read_bytes(), name
    remote_stats, local_stats = json.loads(s3.cat(f"{prefix}/stats.json")), json.loads((local / "stats.json").read_text())
    for key in ("shards_done", "documents_in", "documents_out", "removed", *sections):
        assert remote_stats.get(key) == local_stats.get(key), key
    assert not s3.exists(f"{prefix}/.dedup")  # the work directory stays local


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_dedup_writes_to_s3_the_shards_and_stats_of_the_local_run(cli, s3, tmp_path, method):
    first, _ = dc.write_shards(dc.build(200, seed=3), tmp_path / "in", 2)
    (tmp_path / "in" / "copy.parquet").write_bytes(first.read_bytes())  # an exact duplicate of every document
    assert cli("dedup", method, "--input", tmp_path / "in", "--output", tmp_path / "out")[0] == 0
    code, _, err = cli("dedup", method, "--input", tmp_path / "in", "--output", f"s3://corpus/{method}")
    assert code == 0, err
    assert_same_output(s3, f"s3://corpus/{method}", tmp_path / "out", method)
    assert len(list((tmp_path / "work").glob(f"*/.dedup/{method}"))) == 1  # the local work directory
    assert json.loads((tmp_path / "out" / "stats.json").read_text())[method]["removed_total"] >= 100  # the copies


def test_decontaminate_writes_to_s3_the_shards_and_stats_of_the_local_run(cli, s3, tmp_path, local_run, h):
    texts = [row["text"] for row in h.read_rows(local_run)]
    leaks = [" ".join(texts[i].split()[20:45]) for i in (3, 9)]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "quiz.jsonl").write_text("".join(json.dumps({"question": t}) + "\n" for t in
                                                           [*leaks, "an example that appears in no crawled page at all"
                                                                    " and only in this benchmark file here"]))
    args = ("decontaminate", "--input", local_run, "--benchmarks", tmp_path / "bench")
    assert cli(*args, "--output", tmp_path / "out")[0] == 0
    code, _, err = cli(*args, "--output", "s3://corpus/clean")
    assert code == 0, err
    assert_same_output(s3, "s3://corpus/clean", tmp_path / "out", "benchmarks")
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["benchmarks"]["quiz"]["contaminated_examples"] == 2


def test_stats_and_report_read_stage_outputs_from_s3_like_local_ones(cli, s3, tmp_path, local_run):
    stages = tmp_path / "stages"
    first, _ = dc.write_shards(dc.build(200, seed=3), tmp_path / "in", 2)
    (tmp_path / "in" / "copy.parquet").write_bytes(first.read_bytes())
    assert cli("filter", "--input", local_run, "--output", stages / "filter")[0] == 0
    assert cli("dedup", "exact", "--input", tmp_path / "in", "--output", stages / "dedup")[0] == 0
    assert cli("tokenize", "--input", stages / "dedup", "--output", stages / "cc")[0] == 0
    for name in ("filter", "dedup", "cc.bin", "cc.idx", "cc.stats.json"):
        s3.put(str(stages / name), f"corpus/stages/{name}", recursive=True)
    remote = "s3://corpus/stages"

    for where, path in (("local", stages / "filter"), ("remote", f"{remote}/filter")):
        code, _, err = cli("stats", "--input", path, "--output", tmp_path / f"stats-{where}")
        assert code == 0, err
    assert (tmp_path / "stats-remote" / "summary.json").read_text() == (tmp_path / "stats-local" / "summary.json").read_text()
    assert json.loads((tmp_path / "stats-local" / "summary.json").read_text())["removed"]  # removed/ was read

    for where, root in (("local", str(stages)), ("remote", remote)):
        code, _, err = cli("report", "--input", *(f"{root}/{n}" for n in ("filter", "dedup", "cc")),
                           "--output", tmp_path / f"{where}.html")
        assert code == 0, err
    page = (tmp_path / "local.html").read_text()
    assert "example exact duplicate pairs" in page
    assert (tmp_path / "remote.html").read_text().replace(remote, str(stages)) == page
    code, _, err = cli("report", "--input", f"{remote}/filter", "--output", "s3://corpus/report.html")
    assert code == 2 and "gpt-data report writes a local file" in err
    code, _, err = cli("stats", "--input", f"{remote}/filter")
    assert code == 2 and "--output is required when --input is a file or a URL" in err
