"""The real sbatch scripts on a real (one-node, CPU) Slurm, started by slurm/ci/start_slurm.sh.

`sbatch slurm/gpt3_175b.sh` runs unchanged with a tiny config and a TP2 x PP2 x DP2 layout on
8 CPU ranks (gloo), overridden only through the environment and sbatch's command line.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests/data"


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH: start a one-node Slurm with `bash slurm/ci/start_slurm.sh` (root)"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no Slurm controller answering"
    if info.returncode != 0 or not re.search(r"idle|mixed|allocated", info.stdout):
        return f"no running Slurm controller with a usable node: {(info.stderr or info.stdout).strip()[:200]}"
    return None


SLURM_PROBLEM = _slurm_problem()
# CI (.ci/run) starts Slurm itself and sets this, so a Slurm that fails there fails the run.
SLURM_REQUIRED = os.environ.get("GPT_STACK_REQUIRE_SLURM") == "1"
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(SLURM_PROBLEM is not None and not SLURM_REQUIRED, reason=str(SLURM_PROBLEM))]


@pytest.fixture(autouse=True, scope="module")
def _slurm_is_up():
    if SLURM_PROBLEM is not None:
        pytest.fail(f"GPT_STACK_REQUIRE_SLURM=1 but {SLURM_PROBLEM}")

# The 175B script's GPU request and layout, replaced for 8 CPU ranks on one node.
CPU_ALLOCATION = ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=0", "--cpus-per-task=1",
                  "--time=00:20:00"]
TINY_3D = {"CONFIG": "configs/tiny/gpt3_tiny.yaml", "TP": "2", "PP": "2", "MICRO_BATCH": "2",
           "ACT_CKPT": "false", "CKPT_INTERVAL": "100", "MASTER_PORT": "29631"}


def sbatch(script: str, env: dict[str, str], args: list[str]) -> str:
    result = subprocess.run(["sbatch", "--parsable", *args, script], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait(job: str, timeout: float = 900) -> list[dict[str, str]]:
    """Wait until every task of `job` (an array job has several) has finished; their records."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
        records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.stdout.splitlines()]
        if records and all(r["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                             "OUT_OF_MEMORY") for r in records):
            return records
        time.sleep(2)
    subprocess.run(["scancel", job])
    pytest.fail(f"Slurm job {job} did not finish within {timeout} s")


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "loss" in row]


def wait_for_step(run_dir: Path, step: int, job: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in metrics(run_dir)):
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} logged no step {step} within {timeout} s")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`sbatch slurm/gpt3_175b.sh` with the tiny config on 8 CPU ranks for 10 steps, pre-empted
    once: after the first step the batch shell gets USR1 (as from `--signal=B:USR1@...`)."""
    run_dir = tmp_path_factory.mktemp("slurm_run")
    env = {**TINY_3D, "RUN_DIR": str(run_dir), "EXTRA_ARGS": "train.steps=10 logging.eval_interval=0"}
    job = sbatch("slurm/gpt3_175b.sh", env, [*CPU_ALLOCATION, f"--output={run_dir}/slurm-%j.out"])
    wait_for_step(run_dir, 1, job)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    (record,) = wait(job)
    return job, record, run_dir, (run_dir / f"slurm-{job}.out").read_text()


def test_gpt3_175b_script_trains_tiny_model_on_cpu_slurm(trained):
    job, record, run_dir, log = trained
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log[-3000:]
    assert "8 tasks, TP 2 x PP 2 x DP 2, backend gloo" in log
    layout = json.loads((run_dir / "environment.json").read_text())["layout"]  # what the trainer itself used
    assert layout == {"world": 8, "tp": 2, "pp": 2, "dp": 2, "device": "cpu", "backend": "gloo"}
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
    ckpt = run_dir / "checkpoints"
    latest = (ckpt / "latest").read_text().strip()
    assert latest.endswith("10") and (ckpt / latest).is_dir() and any((ckpt / latest).iterdir())


def test_preempted_job_checkpoints_requeues_and_resumes(trained):
    """USR1 -> the trainer saves at the end of its step and exits -> requeue -> resume from latest."""
    job, record, run_dir, log = trained
    assert record["Restarts"] == "1", log[-3000:]
    assert "USR1: time limit near" in log
    saved = re.search(r"resumed from \S+step0*(\d+) at step (\d+)", log)
    assert saved and saved.group(1) == saved.group(2) and 1 <= int(saved.group(1)) < 10, log[-3000:]


def test_resubmitted_job_resumes_from_latest_checkpoint(trained):
    _, first, run_dir, _ = trained
    assert first["JobState"] == "COMPLETED"
    done = len(metrics(run_dir))
    env = {**TINY_3D, "RUN_DIR": str(run_dir), "EXTRA_ARGS": "train.steps=12 logging.eval_interval=0"}
    job = sbatch("slurm/gpt3_175b.sh", env, [*CPU_ALLOCATION, f"--output={run_dir}/slurm-%j.out"])
    (record,) = wait(job)
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED", log[-3000:]
    assert "resumed from" in log and "at step 10" in log
    resumed = metrics(run_dir)[done:]
    assert [r["step"] for r in resumed] == [11, 12], log[-3000:]
    assert (run_dir / "checkpoints/latest").read_text().strip().endswith("12")


def test_term_to_the_batch_shell_saves_and_ends_the_job_with_zero(tmp_path):
    """`scancel --signal=TERM --batch`: the script passes it on as USR1 (srun would SIGKILL on TERM), the
    ranks finish their step, save and exit 0, and the job ends COMPLETED without a requeue."""
    env = {**TINY_3D, "TP": "1", "PP": "1", "RUN_DIR": str(tmp_path), "MASTER_PORT": "29632",
           "EXTRA_ARGS": "train.steps=500 logging.eval_interval=0"}
    # 30 minutes: the script's USR1 comes 15 minutes before the limit, long after this test (with 10 minutes it
    # came at once, and on a loaded machine before the ranks could catch it: a requeue, not this test's TERM)
    allocation = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:30:00"]
    job = sbatch("slurm/gpt3_175b.sh", env, [*allocation, f"--output={tmp_path}/slurm-%j.out"])
    wait_for_step(tmp_path, 1, job)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    (record,) = wait(job, timeout=300)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0" and record["Restarts"] == "0", log[-3000:]
    assert "TERM: asking the trainer to checkpoint and stop" in log and "stopping after step" in log, log[-3000:]
    steps = [r["step"] for r in metrics(tmp_path)]
    latest = (tmp_path / "checkpoints/latest").read_text().strip()
    assert 1 <= steps[-1] < 500 and latest.endswith(f"{steps[-1]:08d}"), (steps, latest)


def test_allocation_that_does_not_match_the_layout_fails_clearly(tmp_path):
    env = {**TINY_3D, "TP": "3", "PP": "1", "RUN_DIR": str(tmp_path)}
    job = sbatch("slurm/gpt3_175b.sh", env, [*CPU_ALLOCATION, f"--output={tmp_path}/slurm-%j.out"])
    (record,) = wait(job, timeout=120)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert record["JobState"] == "FAILED"
    assert "allocation has 8 tasks (1 nodes), not divisible by TP x PP = 3 x 1" in log


def _documents(directory: Path) -> list[str]:
    return sorted(text for shard in sorted(directory.glob("*.parquet"))
                  for text in pq.read_table(shard, columns=["text"]).column("text").to_pylist())


def test_data_prep_array_and_mpi_dedup_jobs_match_a_local_run(tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    for name in ("cc-sample-0000.warc.gz", "ccnet-head-0091.jsonl.gz"):
        (shards / name).symlink_to(DATA / name)
    allocation = ["--cpus-per-task=1", "--time=00:10:00"]
    extract = sbatch("slurm/data_array.sh",
                     {"STAGE": "extract", "INPUT": str(shards), "OUTPUT": str(tmp_path / "docs")},
                     ["--array=0-1", *allocation, f"--output={tmp_path}/extract-%a.out"])
    dedup = sbatch("slurm/data_dedup_mpi.sh", {"INPUT": str(tmp_path / "docs"), "OUTPUT": str(tmp_path / "unique")},
                   ["--nodes=1", "--ntasks-per-node=2", f"--dependency=afterok:{extract}", *allocation,
                    f"--output={tmp_path}/dedup.out"])
    tasks = wait(extract, timeout=300)
    assert len(tasks) == 2 and all(t["JobState"] == "COMPLETED" for t in tasks)
    # Each array task did one of the two shards.
    logs = [(tmp_path / f"extract-{i}.out").read_text() for i in (0, 1)]
    assert all("1 this run" in log for log in logs), logs
    (record,) = wait(dedup, timeout=300)
    assert record["JobState"] == "COMPLETED", (tmp_path / "dedup.out").read_text()[-3000:]
    assert "[0/2]" in (tmp_path / "dedup.out").read_text() and "[1/2]" in (tmp_path / "dedup.out").read_text()

    with gzip.open(DATA / "ccnet-head-0091.jsonl.gz", "rt") as lines:
        ccnet_docs = sum(1 for line in lines if line.strip())
    extracted = _documents(tmp_path / "docs")
    assert len(extracted) == 22 + ccnet_docs  # 22 HTML responses in the WARC (tests/data/README.md)

    # The same two stages in one local process give the same documents.
    for stage, src, dst in (("extract", shards, "local_docs"), ("dedup minhash", tmp_path / "local_docs", "local_unique")):
        subprocess.run([sys.executable, "-m", "data_pipeline.cli", *stage.split(), "--input", str(src), "--output", str(tmp_path / dst),
                        "--executor", "local"], check=True, capture_output=True, timeout=300)
    assert _documents(tmp_path / "local_docs") == extracted
    assert _documents(tmp_path / "unique") == _documents(tmp_path / "local_unique")
