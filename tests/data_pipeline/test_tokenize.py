"""`gpt-data tokenize`: real documents -> Megatron token shards that megatron-core reads unchanged."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import indexed
from data_pipeline.blend import load_blend
from data_pipeline.document import DOCUMENT_SCHEMA, Document, extend_schema
from common.errors import UserError
from data_pipeline.shards import ShardWriter, read_documents
from data_pipeline.tokenize import quality_path, tokenize
from data_pipeline.tokenizers import load_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
TOKENS = DATA / "tokens"

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed"
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def real_documents() -> list[Document]:
    return [d for name in ("ccnet-head-0091.jsonl.gz", "wiki-en-sample.jsonl.gz")
            for d in read_documents(DATA / name)]


def write_shards(root: Path, docs: list[Document], count: int, schema: pa.Schema = DOCUMENT_SCHEMA) -> list[list[Document]]:
    """Deal `docs` round-robin into `count` parquet shards; return each shard's documents."""
    shards = [docs[i::count] for i in range(count)]
    for i, shard in enumerate(shards):
        with ShardWriter(root / f"part-{i:03d}.parquet", schema) as out:
            for doc in shard:
                out.write(doc)
    return shards


def megatron_documents(prefix: Path) -> list[np.ndarray]:
    """Every document as megatron-core reads it (copied: its arrays die with the dataset's mmap)."""
    dataset = IndexedDataset(str(prefix))
    return [np.array(dataset[i]) for i in range(len(dataset))]


def test_megatron_reads_tokenized_real_documents(tmp_path):
    docs = real_documents()
    shards = write_shards(tmp_path / "in", docs, 3)
    summary = tokenize(tmp_path / "in", tmp_path / "out" / "mix", "gpt2", quiet=True)
    tok = load_tokenizer("gpt2")
    expected = [d.text for shard in shards for d in shard]  # sorted shard order, then row order
    got = megatron_documents(tmp_path / "out" / "mix")
    assert len(got) == len(expected) == summary["documents"] == len(docs)
    dataset = IndexedDataset(str(tmp_path / "out" / "mix"))
    assert dataset.index.dtype == np.uint16
    assert int(dataset.sequence_lengths.sum()) == summary["tokens"]
    assert list(dataset.document_indices) == list(range(len(docs) + 1))
    for text, ids in zip(expected, got):
        assert ids[-1] == tok.eod_id and tok.eod_id not in ids[:-1]
        assert tok.decode(ids[:-1]) == text
    assert summary["tokens"] == sum(len(tok.encode(t)) + 1 for t in expected)
    stats = json.loads((tmp_path / "out" / "mix.stats.json").read_text())["stats"]
    assert stats["documents_in"] == stats["documents_out"] == len(docs)
    assert stats["characters_in"] == sum(map(len, expected))
    assert not (tmp_path / "out" / "mix.parts").exists()  # work dir removed after the merge


def test_our_writer_matches_megatron_builder_byte_for_byte(tmp_path):
    tok = load_tokenizer("gpt2")
    docs = [tok.encode(d.text) + [tok.eod_id] for d in real_documents()]
    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=np.uint16)
    for ids in docs:
        builder.add_document(np.array(ids), [len(ids)])
    builder.finalize(str(tmp_path / "megatron.idx"))
    with indexed.TokenShardWriter(tmp_path / "ours", np.uint16) as writer:
        writer.add_documents([ids[:-1] for ids in docs[:7]], tok.eod_id)
        writer.add_documents([ids[:-1] for ids in docs[7:]], tok.eod_id)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"megatron{suffix}").read_bytes()
    index = indexed.read_index(tmp_path / "megatron")
    assert (index.documents, index.tokens) == (len(docs), sum(map(len, docs)))


def test_output_does_not_depend_on_workers_and_merge_is_ordered(tmp_path):
    write_shards(tmp_path / "in", real_documents(), 4)
    one = tokenize(tmp_path / "in", tmp_path / "w1" / "t", "gpt2", workers=1, quiet=True)
    two = tokenize(tmp_path / "in", tmp_path / "w2" / "t", "gpt2", workers=2, quiet=True)
    assert one["tokens"] == two["tokens"]
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "w1" / f"t{suffix}").read_bytes() == (tmp_path / "w2" / f"t{suffix}").read_bytes()
    # The merge equals tokenizing each shard alone and concatenating in sorted order.
    parts = []
    for i in range(4):
        tokenize(tmp_path / "in" / f"part-{i:03d}.parquet", tmp_path / f"p{i}", "gpt2", quiet=True)
        parts += megatron_documents(tmp_path / f"p{i}")
    merged = megatron_documents(tmp_path / "w1" / "t")
    assert len(parts) == len(merged) and all(np.array_equal(a, b) for a, b in zip(parts, merged))


def test_resume_redoes_only_unfinished_shards(tmp_path):
    docs = real_documents()
    write_shards(tmp_path / "in", docs, 3)
    reference = tokenize(tmp_path / "in", tmp_path / "ref" / "t", "gpt2", quiet=True)
    broken = tmp_path / "in" / "part-001.parquet"
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="1 shard\\(s\\) failed"):
        tokenize(tmp_path / "in", tmp_path / "run" / "t", "gpt2", quiet=True)
    parts = tmp_path / "run" / "t.parts"
    done = sorted(p.name for p in (parts / ".done").iterdir())
    assert done == ["part-000.json", "part-002.json"] and not indexed.exists(tmp_path / "run" / "t")
    finished = {name: (parts / ".done" / name).stat().st_mtime_ns for name in done}
    broken.write_bytes(good_bytes)
    summary = tokenize(tmp_path / "in", tmp_path / "run" / "t", "gpt2", keep_parts=True, quiet=True)
    assert {n: (parts / ".done" / n).stat().st_mtime_ns for n in done} == finished  # not redone
    assert summary["tokens"] == reference["tokens"]
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "run" / f"t{suffix}").read_bytes() == (tmp_path / "ref" / f"t{suffix}").read_bytes()
    # A second run over the same inputs finds the merged shard complete and does nothing.
    before = (tmp_path / "run" / "t.bin").stat().st_mtime_ns
    tokenize(tmp_path / "in", tmp_path / "run" / "t", "gpt2", quiet=True)
    assert (tmp_path / "run" / "t.bin").stat().st_mtime_ns == before


def test_bundled_samples_regenerate_identically(tmp_path):
    for name, source in (("ccnet", "ccnet-head-0091.jsonl.gz"), ("wiki", "wiki-en-sample.jsonl.gz")):
        prefix = tmp_path / f"{name}_gpt2_text_document"
        tokenize(DATA / source, prefix, "gpt2", quiet=True)
        for suffix in (".bin", ".idx"):
            assert Path(f"{prefix}{suffix}").read_bytes() == (TOKENS / f"{name}_gpt2_text_document{suffix}").read_bytes()
    blend = load_blend(TOKENS / "blend2.json")
    assert [s.name for s in blend.sources] == ["ccnet", "wiki"] and [s.weight for s in blend.sources] == [0.7, 0.3]
    for source in blend.sources:
        assert (source.tokens, source.documents) == (indexed.read_index(source.prefix).tokens,
                                                     len(IndexedDataset(source.prefix)))
    assert blend.load_tokenizer().eod_id == 50256
    assert load_blend(TOKENS / "blend.json").megatron_blend() == ([blend.sources[0].prefix], [1.0])


def test_empty_documents_are_skipped_and_quality_scores_stay_aligned(tmp_path):
    docs = real_documents()[:6]
    docs.insert(2, Document(id="empty", text=""))
    schema = extend_schema(DOCUMENT_SCHEMA, quality=pa.float32())
    scores = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8]
    for doc, score in zip(docs, scores):
        doc.metadata["quality"] = score
    write_shards(tmp_path / "in", docs, 2, schema)
    summary = tokenize(tmp_path / "in", tmp_path / "t", "gpt2", quiet=True)
    stats = json.loads((tmp_path / "t.stats.json").read_text())["stats"]
    assert stats["skipped"] == {"empty_text": 1} and stats["documents_out"] == summary["documents"] == 6
    kept = [(d.text, q) for i in (0, 1) for d, q in zip(docs[i::2], scores[i::2]) if d.text]  # shard order
    tok = load_tokenizer("gpt2")
    assert [tok.decode(ids[:-1]) for ids in megatron_documents(tmp_path / "t")] == [t for t, _ in kept]
    assert np.allclose(np.load(quality_path(tmp_path / "t")), [s for _, s in kept])


def test_sentencepiece_and_int32_shards_round_trip(tmp_path):
    from data_pipeline.tokenizer_train import train_tokenizer
    from test_tokenizers import write_extended_gpt2

    docs = real_documents()
    write_shards(tmp_path / "in", docs, 2)
    sp = train_tokenizer(tmp_path / "in", tmp_path / "sp", vocab_size=800)
    write_extended_gpt2(tmp_path / "big.tiktoken", [d.text for d in docs], vocab_size=70000)
    for spec, dtype in ((f"sentencepiece:{sp.path}", np.uint16), (str(tmp_path / "big.tiktoken"), np.int32)):
        tok = load_tokenizer(spec)
        prefix = tmp_path / f"out-{np.dtype(dtype).name}"
        tokenize(tmp_path / "in", prefix, spec, workers=2, quiet=True)
        dataset = IndexedDataset(str(prefix))
        assert dataset.index.dtype == dtype
        decoded = sorted(tok.decode(dataset[i][:-1]) for i in range(len(dataset)))
        assert decoded == sorted(d.text for d in docs)
        assert all(dataset[i][-1] == tok.eod_id for i in range(len(dataset)))
    assert max(int(ids.max()) for ids in megatron_documents(tmp_path / "out-int32")) > 65535


@pytest.mark.parametrize("setup, message", [
    ("dir_output", "is a prefix, not a directory"),
    ("no_text_column", "no column 'body'"),
    ("missing_input", "does not exist"),
])
def test_bad_input_is_a_clear_error(tmp_path, setup, message):
    write_shards(tmp_path / "in", real_documents()[:2], 1)
    output, kwargs, source = tmp_path / "t", {}, tmp_path / "in"
    if setup == "dir_output":
        output.mkdir()
    elif setup == "no_text_column":
        kwargs["text_column"] = "body"
    else:
        source = tmp_path / "nowhere"
    with pytest.raises(UserError, match=message):
        tokenize(source, output, "gpt2", quiet=True, **kwargs)


def test_cli_tokenize(tmp_path, capsys):
    from data_pipeline.cli import main

    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Hello world", "Hello"]}), tmp_path / "docs.parquet")
    assert main(["tokenize", "--input", str(tmp_path / "docs.parquet"), "--output", str(tmp_path / "t"),
                 "--tokenizer", "gpt2"]) == 0
    assert [list(d) for d in megatron_documents(tmp_path / "t")] == [[15496, 995, 50256], [15496, 50256]]
    assert "5 tokens (uint16), 2 documents" in capsys.readouterr().err
    assert main(["tokenize", "--input", str(tmp_path / "docs.parquet"), "--output", str(tmp_path),
                 "--tokenizer", "gpt2"]) == 2


def test_prefix_of_other_inputs_or_options_is_refused_until_overwrite(tmp_path):
    docs = real_documents()
    write_shards(tmp_path / "in", docs, 2)
    prefix = tmp_path / "run" / "t"
    tokenize(tmp_path / "in", prefix, "gpt2", quiet=True)
    merged = indexed.bin_path(prefix).read_bytes()
    write_shards(tmp_path / "in", docs[:-3], 2)  # same shard names, other documents
    with pytest.raises(UserError, match="do not match this run: input files changed; rerun with --overwrite"):
        tokenize(tmp_path / "in", prefix, "gpt2", quiet=True)
    with pytest.raises(UserError, match=r"other settings \(quality_column\)"):
        tokenize(tmp_path / "in", prefix, "gpt2", quality_column="score", quiet=True)
    assert indexed.bin_path(prefix).read_bytes() == merged
    summary = tokenize(tmp_path / "in", prefix, "gpt2", overwrite=True, quiet=True)
    fresh = tokenize(tmp_path / "in", tmp_path / "fresh" / "t", "gpt2", quiet=True)
    assert summary["documents"] == fresh["documents"] == len(docs) - 3
    assert indexed.bin_path(prefix).read_bytes() == indexed.bin_path(tmp_path / "fresh" / "t").read_bytes()


def test_recipe_step_is_typed_like_the_command(tmp_path):
    """The recipe's tokenize step checks its keys against TokenizeOptions (the dataclass the
    command's flags are made from) and runs the command's function on the same prefix."""
    from data_pipeline.recipe import STEPS

    step = STEPS["tokenize"]
    with pytest.raises(UserError, match="unknown config key 'tokenize.tokenizr'"):
        step.check({"tokenizr": "gpt2"})
    with pytest.raises(UserError, match="config key 'tokenize.batch_size' must be int"):
        step.check({"batch_size": "many"})
    with pytest.raises(UserError, match="unknown tokenizer"):
        step.check({"tokenizer": "bpe"})
    step.run(DATA / "ccnet-head-0091.jsonl.gz", tmp_path / "05-tokenize", {"batch_size": 7}, workers=1,
             executor="local", overwrite=False)
    assert json.loads((tmp_path / "05-tokenize.stats.json").read_text())["stats"]["tokens_out"] == 21814
    assert (tmp_path / "05-tokenize.bin").read_bytes() == (TOKENS / "ccnet_gpt2_text_document.bin").read_bytes()


@pytest.mark.mpi
def test_mpi_ranks_write_the_same_shard(tmp_path):
    import subprocess
    import sys

    write_shards(tmp_path / "in", real_documents(), 4)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "data_pipeline.cli", "tokenize",
                             "--input", str(tmp_path / "in"), "--output", str(tmp_path / "mpi" / "t")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[0/2]" in result.stderr and "[1/2]" in result.stderr  # both ranks took shards
    tokenize(tmp_path / "in", tmp_path / "one" / "t", "gpt2", quiet=True)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "mpi" / f"t{suffix}").read_bytes() == (tmp_path / "one" / f"t{suffix}").read_bytes()
    assert not list((tmp_path / "mpi" / "t.parts").glob("*.bin"))  # parts dropped, markers kept
