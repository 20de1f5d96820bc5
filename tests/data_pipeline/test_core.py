"""Shared core: shard discovery and I/O, completion markers, stats merging, executors, resume,
reruns (stale work, concurrent runs, unwritable outputs)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.document import DOCUMENT_SCHEMA, Document, extend_schema
from common.errors import UserError
from data_pipeline.executor import detect_rank, make_tasks
from data_pipeline.shards import (SOURCE_ROOT, ShardWriter, code_version, discover_shards, read_documents, shard_name,
                                  source_closure)
from data_pipeline.stats import Stats, merge_into


def test_discovery_is_sorted_recursive_and_skips_outputs_of_other_stages(tmp_path):
    for name in ["b/2.jsonl.gz", "a.parquet", "b/1.jsonl", "removed/x.parquet", ".done/y.parquet",
                 "_tmp/z.parquet", "notes.txt", "a.parquet.tmp-123"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_shards(tmp_path)]
    assert found == ["a.parquet", "b/1.jsonl", "b/2.jsonl.gz"]
    assert [shard_name(tmp_path / f, tmp_path) for f in found] == ["a", "b__1", "b__2"]
    with pytest.raises(UserError, match="no input shards"):
        discover_shards(tmp_path / "_tmp", (".warc.gz",))
    with pytest.raises(UserError, match="does not exist"):
        discover_shards(tmp_path / "missing")


def test_same_output_name_for_two_inputs_is_refused(tmp_path):
    with pytest.raises(UserError, match="same output name"):
        make_tasks([tmp_path / "x.jsonl", tmp_path / "x.jsonl.gz"], tmp_path / "out", tmp_path)


def test_truncated_and_garbled_jsonl_keeps_the_readable_documents(tmp_path, ccnet_sample):
    lines = gzip.decompress(ccnet_sample.read_bytes()).splitlines(keepends=True)
    garbled = lines[:3] + [b"{not json\n", b"[1, 2]\n", b'{"id": "x"}\n'] + lines[3:]
    truncated = gzip.compress(b"".join(garbled))[: -2000]
    (tmp_path / "t.jsonl.gz").write_bytes(truncated)
    stats = Stats()
    docs = list(read_documents(tmp_path / "t.jsonl.gz", stats))
    assert 3 <= len(docs) < 10
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in lines[: len(docs)]]
    assert stats.get("skipped", "bad_json_line") == 1
    assert stats.get("skipped", "no_text") == 2
    assert stats.get("skipped", "truncated_or_corrupt_gzip") == 1


def test_writer_is_atomic_and_keeps_extra_columns(tmp_path):
    schema = extend_schema(DOCUMENT_SCHEMA, quality=pa.float32())
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with ShardWriter(target, schema) as out:
            out.write(Document(id="1", text="one", metadata={"quality": 0.5}))
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with ShardWriter(target, schema, rows_per_group=2) as out:
        for i in range(5):
            out.write(Document(id=str(i), text="x" * i, metadata={"quality": i / 10, "ignored": 1}))
    table = pq.read_table(target)
    assert table.schema.names == list(DOCUMENT_SCHEMA.names) + ["quality"]
    assert table.column("quality").to_pylist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert pq.ParquetFile(target).metadata.row_group(0).column(0).compression == "ZSTD"
    assert [d.metadata for d in read_documents(target)] == [{"quality": pytest.approx(i / 10)} for i in range(5)]


def test_stats_merge_adds_counts_takes_peaks_and_concatenates_notes():
    a = Stats()
    a.add("documents_in", n=3)
    a.add("removed", "c4:lorem_ipsum")
    a.set_max("max_rss_mb", value=100.0)
    a.note("first")
    b = {"documents_in": 2, "removed": {"c4:lorem_ipsum": 2, "url:blocked_domain": 1}, "max_rss_mb": 80.0,
         "notes": ["second"]}
    merged = merge_into({}, a.to_dict())
    merge_into(merged, b)
    assert merged == {"documents_in": 5, "removed": {"c4:lorem_ipsum": 3, "url:blocked_domain": 1},
                      "max_rss_mb": 100.0, "notes": ["first", "second"]}
    assert b["removed"] == {"c4:lorem_ipsum": 2, "url:blocked_domain": 1}  # inputs untouched


def test_rank_detection_from_slurm_and_defaults(monkeypatch):
    for key in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_PROCID",
                "SLURM_NTASKS", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert detect_rank() == detect_rank("local") == (0, 1, "local")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert detect_rank() == (3, 4, "slurm")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert detect_rank() == (2, 3, "slurm")
    assert detect_rank("local") == (0, 1, "local")


def make_inputs(directory: Path, warc: Path, copies: int) -> Path:
    directory.mkdir()
    for i in range(copies):
        shutil.copy(warc, directory / f"part-{i:02d}.warc.gz")
    return directory


def outputs(directory: Path) -> dict[str, list[dict]]:
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(directory.glob("*.parquet"))}


def test_workers_give_the_same_output_as_one_process(cli, tmp_path, warc_sample):
    inputs = make_inputs(tmp_path / "in", warc_sample, 3)
    assert cli("extract", "--input", inputs, "--output", tmp_path / "one")[0] == 0
    assert cli("extract", "--input", inputs, "--output", tmp_path / "two", "--workers", "2")[0] == 0
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    assert len(outputs(tmp_path / "two")) == 3
    stats = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert stats["documents_out"] == 66 and stats["shards_done"] == 3 and stats["max_rss_mb"] > 0
    code, _, err = cli("extract", "--input", inputs, "--output", tmp_path / "two", "--workers", "2")
    assert code == 0 and "0 this run, 3 already done" in err


def wait_for_markers(out: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".done").glob("*.json"))) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {count} markers in {out}: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}")


def test_killed_run_resumes_to_identical_output(h, tmp_path, warc_sample):
    inputs = make_inputs(tmp_path / "in", warc_sample, 8)
    subprocess.run([sys.executable, "-m", "data_pipeline.cli", "extract", "--input", inputs, "--output",
                    tmp_path / "clean"], check=True, capture_output=True)
    out = tmp_path / "killed"
    for markers in (1, 4):  # kill twice, mid-run, then let it finish
        proc = h.gpt_data_process("extract", "--input", inputs, "--output", out)
        wait_for_markers(out, markers, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = len(list((out / ".done").glob("*.json")))
    assert 4 <= done_before < 8
    proc = h.gpt_data_process("extract", "--input", inputs, "--output", out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"({8 - done_before} this run, {done_before} already done)" in err
    assert outputs(out) == outputs(tmp_path / "clean")
    assert not list(out.glob("*.tmp-*"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_out"] == 8 * 22 and stats["shards_done"] == 8


def test_slurm_array_tasks_split_the_inputs(h, tmp_path, warc_sample):
    inputs = make_inputs(tmp_path / "in", warc_sample, 5)
    out = tmp_path / "out"
    done = []
    for task in range(3):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}
        proc = h.gpt_data_process("extract", "--input", inputs, "--output", out, env=env)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        done.append(sorted(p.stem for p in (out / ".done").glob("*.json")))
    assert done == [["part-00", "part-03"], ["part-00", "part-01", "part-03", "part-04"],
                    ["part-00", "part-01", "part-02", "part-03", "part-04"]]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_done"] == 5 and stats["documents_out"] == 5 * 22


@pytest.mark.mpi
def test_mpi_ranks_split_the_inputs(tmp_path, warc_sample):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("mpiexec not installed in the venv")
    inputs = make_inputs(tmp_path / "in", warc_sample, 4)
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "data_pipeline.cli", "extract", "--input",
                           inputs, "--output", tmp_path / "mpi"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "extract [0/2]" in proc.stderr and "extract [1/2]" in proc.stderr
    subprocess.run([sys.executable, "-m", "data_pipeline.cli", "extract", "--input", inputs, "--output",
                    tmp_path / "local"], check=True, capture_output=True)
    assert outputs(tmp_path / "mpi") == outputs(tmp_path / "local")
    stats = json.loads((tmp_path / "mpi" / "stats.json").read_text())
    assert stats["shards_done"] == 4 and stats["documents_out"] == 88


# ---------------------------------------------------------------- reruns


def test_replaced_input_is_refused_and_overwrite_redoes_only_its_shard(cli, tmp_path, warc_sample):
    """A crawl file replaced by a longer one must not keep the shorter one's output (a cut-off download
    is not even marked done: test_extract)."""
    inputs = make_inputs(tmp_path / "in", warc_sample, 2)
    data = warc_sample.read_bytes()
    (inputs / "part-00.warc.gz").write_bytes(data[: data.find(b"\x1f\x8b\x08", len(data) // 2)])  # whole records
    out = tmp_path / "out"
    assert cli("extract", "--input", inputs, "--output", out)[0] == 0
    partial = (out / "part-00.parquet").read_bytes()
    assert pq.read_metadata(out / "part-00.parquet").num_rows < 22
    untouched = (out / ".done" / "part-01.json").stat().st_mtime_ns
    shutil.copy(warc_sample, inputs / "part-00.warc.gz")
    code, _, err = cli("extract", "--input", inputs, "--output", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "1 finished shard(s) (e.g. part-00) do not match this run: input files changed" in err
    assert "--overwrite" in err and (out / "part-00.parquet").read_bytes() == partial
    code, _, err = cli("extract", "--input", inputs, "--output", out, "--overwrite")
    assert code == 0 and "(1 this run, 1 already done)" in err
    assert pq.read_metadata(out / "part-00.parquet").num_rows == 22
    assert (out / ".done" / "part-01.json").stat().st_mtime_ns == untouched
    assert json.loads((out / "stats.json").read_text())["documents_out"] == 44


@pytest.mark.parametrize("stage", ["extract", "filter"])
def test_parquet_without_a_text_column_fails_instead_of_dropping_everything(cli, tmp_path, ccnet_sample, stage):
    docs = list(read_documents(ccnet_sample))
    pq.write_table(pa.table({"id": [d.id for d in docs], "content": [d.text for d in docs]}), tmp_path / "d.parquet")
    code, _, err = cli(stage, "--input", tmp_path / "d.parquet", "--output", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert "1 shard(s) failed" in err and "no 'text' column (columns: id, content)" in err.strip().splitlines()[-1]
    assert not list((tmp_path / "out").rglob("*.parquet")) and not (tmp_path / "out" / ".done" / "d.json").exists()


def open_fifo_for_writing(fifo: Path, reader: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until `reader` opens `fifo` (it is then inside that shard, its locks taken); a blocking write end."""
    deadline = time.time() + timeout
    while time.time() < deadline and reader.poll() is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
        except OSError:
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd
    raise AssertionError(f"{fifo} was not opened: {reader.poll()} {reader.stderr.read() if reader.stderr else ''}")


@pytest.mark.parametrize("command, stats_dir", [(["extract"], "."),
                                                (["dedup", "exact", "--stage", "hashes"], ".dedup/exact/hashes")])
def test_second_run_into_the_same_output_is_refused_while_array_tasks_share_it(h, tmp_path, ccnet_sample,
                                                                             command, stats_dir):
    """Shard a.jsonl is a FIFO, so the run that took it stays inside it until the test closes it
    (unwritten: a write would change its mtime, i.e. the input, under the run)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.mkfifo(inputs / "a.jsonl")
    shutil.copy(ccnet_sample, inputs / "b.jsonl.gz")
    argv = (*command, "--input", inputs, "--output", tmp_path / "out")
    array_task = [{"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_COUNT": "2"} for t in (0, 1)]
    first = h.gpt_data_process(*argv, env=array_task[0])  # takes a.jsonl
    fifo = open_fifo_for_writing(inputs / "a.jsonl", first)
    second = h.gpt_data_process(*argv, "--executor", "local")
    try:
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2 and "another run is writing" in err and "(shard a)" in err, err
        assert len(err.strip().splitlines()) == 1
        other_task = h.gpt_data_process(*argv, env=array_task[1])  # takes b.jsonl.gz
        _, err = other_task.communicate(timeout=120)
        assert other_task.returncode == 0, err
    finally:
        if second.poll() is None:
            second.kill()
        os.close(fifo)  # the shard ends empty
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0 and "Traceback" not in err, err
    stats = json.loads((tmp_path / "out" / stats_dir / "stats.json").read_text())
    assert stats["shards_done"] == 2 and stats["documents_in"] == 10


TOKENS = Path(__file__).resolve().parents[1] / "data" / "tokens"


@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "proc"])
@pytest.mark.parametrize("command", [
    ("extract", "--output", "{}"), ("dedup", "exact", "--output", "{}"), ("tokenize", "--output", "{}/cc"),
    ("stats", "--output", "{}"), ("tokenizer", "train", "--vocab-size", "300", "--output", "{}/sp"),
    ("classifier", "train", "--negative", "{input}", "--output", "{}/model.npz"),
    ("mixture", "--source", f"wiki={TOKENS / 'wiki_gpt2_text_document'}", "--output", "{}/blend.json"),
])
def test_output_that_cannot_be_written_is_one_line(cli, tmp_path, ccnet_sample, command, where):
    (tmp_path / "file").write_text("a regular file")
    out = {"under-a-file": tmp_path / "file" / "out", "under-proc": Path("/proc/gpt-data-test/out"),
           "proc": Path("/proc")}[where]
    docs = tmp_path / "docs.parquet"
    with ShardWriter(docs) as writer:
        for doc in read_documents(ccnet_sample):
            writer.write(doc)
    inputs = ["--positive" if command[0] == "classifier" else "--input", docs] if command[0] != "mixture" else []
    code, _, err = cli(*(a.format(out, input=docs) for a in command), *inputs)
    assert code == 2 and "cannot write to --output" in err and len(err.strip().splitlines()) == 1, err


def test_a_stage_code_version_covers_the_code_it_imports_and_nothing_else(tmp_path):
    """Markers record the digest of the stage module and everything of ours it imports (module- or function-level,
    `from package import module` too): a change there makes finished shards stale, a change elsewhere does not."""
    package = tmp_path / "pkgx"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "stage.py": "import json\nfrom pkgx.sub import helper\n\ndef run():\n    from pkgx import late\n",
        "sub/__init__.py": "",
        "sub/helper.py": "from pkgx.base import VALUE\n",
        "base.py": "VALUE = 1\n",
        "late.py": "import pkgx.base\n",
        "report.py": "from pkgx import stage\n",  # imports the stage, is not imported by it
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    closure = source_closure("pkgx.stage", root=tmp_path, packages=("pkgx",))
    assert [p.relative_to(package).as_posix() for p in closure] == [
        "__init__.py", "base.py", "late.py", "stage.py", "sub/__init__.py", "sub/helper.py"]

    ours = {p.relative_to(SOURCE_ROOT).as_posix() for p in source_closure("data_pipeline.filters.stage")}
    assert {"data_pipeline/filters/gopher.py", "data_pipeline/filters/word_pass.py", "data_pipeline/extract/warc.py",
            "data_pipeline/executor.py", "common/options.py"} <= ours
    assert not ours & {"data_pipeline/report.py", "data_pipeline/tokenize.py", "data_pipeline/dedup/fuzzy.py",
                       "data_pipeline/cli.py", "data_pipeline/recipe.py"}
    assert code_version("data_pipeline.filters.stage") != code_version("data_pipeline.tokenize")
