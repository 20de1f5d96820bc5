"""Launching and stopping multi-process runs: a mistake is one line, a stop exits 0, a hang ends.

`python -m training.torchrun` is torchrun with the trainer's checks run once before any rank
starts, and with SIGTERM passed to the ranks (torchrun itself exits 1 with a traceback).
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.training.launch import REPO, pretrain_command, pretrain_env
from training.torchrun import child_pids

pytestmark = pytest.mark.multiproc

AS_A_USER_SEES_IT = {"PYTHONWARNINGS": ""}  # Python's default warning filters, not the tests' "ignore"
TRAINER_TRACEBACK = re.compile(r'File ".*/training/')


def start(run_dir: Path, nproc: int, overrides: list[str], launcher: str = "torch.distributed.run"):
    return subprocess.Popen(pretrain_command(run_dir, nproc, overrides, launcher=launcher), cwd=REPO,
                            env=pretrain_env(AS_A_USER_SEES_IT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().count("\n") >= step):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(item for item in environ if item.startswith(b"RANK="))[5:])


@pytest.mark.parametrize("nproc, overrides, message", [
    (2, ["parallel.tpp=2"], r"unknown config key 'parallel\.tpp' .*"),
    # 4 layers on 4 stages: DeepSpeed's cut gives the first and the last stage only embeddings,
    # and such a run hangs after step 1 (training.memory.check_stages)
    (4, ["parallel.pp=4"], r"parallel\.pp=4 .* leaves pipeline stage 0, 3 without a transformer block, .*"),
])
def test_launcher_refuses_a_mistake_in_one_line_before_any_rank_starts(tmp_path, nproc, overrides, message):
    run_dir = tmp_path / "never-created"
    result = subprocess.run(pretrain_command(run_dir, nproc, overrides, launcher="training.torchrun"), cwd=REPO,
                            env=pretrain_env(AS_A_USER_SEES_IT), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert re.fullmatch(f"training.torchrun: error: {message}\n", result.stderr), result.stderr
    assert result.stdout == "" and not run_dir.exists()


def test_torchrun_ranks_report_a_config_error_once(tmp_path):
    """Every rank finds the mistake, one says it; torchrun still adds its own ChildFailedError summary."""
    result = subprocess.run(pretrain_command(tmp_path / "run", 2, ["parallel.tpp=2"]), cwd=REPO,
                            env=pretrain_env(AS_A_USER_SEES_IT), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("training.pretrain: error:")]
    assert len(errors) == 1 and "unknown config key 'parallel.tpp'" in errors[0], result.stderr
    assert not TRAINER_TRACEBACK.search(result.stderr)


def test_sigterm_to_the_launcher_saves_and_exits_zero(tmp_path):
    process = start(tmp_path, 2, ["train.steps=200"], launcher="training.torchrun")
    wait_for_step(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Warning" not in err, err
    stopped = re.search(r"stopping after step (\d+) as asked \(signal 15\)", out)
    assert stopped and 2 <= int(stopped.group(1)) < 200, out
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step{int(stopped.group(1)):08d}"


def test_a_rank_that_stops_answering_ends_the_run_within_the_timeout(tmp_path):
    """A rank frozen mid-run (SIGSTOP, as a hung device leaves it) must not keep the others
    waiting forever: they end after parallel.timeout_minutes, in one line each."""
    process = start(tmp_path, 2, ["train.steps=200", "parallel.timeout_minutes=0.2"])
    wait_for_step(tmp_path, 1, process)
    ranks = {rank_of(pid): pid for pid in child_pids(process.pid)}
    os.kill(ranks[1], signal.SIGSTOP)
    deadline = time.monotonic() + 120
    while running(ranks[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(ranks[1], signal.SIGCONT)  # the run has failed by now (or the test will); let the rank see it
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("training.pretrain: error:")]
    assert errors, err[-3000:]
    # gloo names the timeout it applied: 0.2 minutes
    assert re.fullmatch(r"training.pretrain: error: rank 0: a collective failed: Timed out waiting 12000ms .*"
                        r" \(ranks wait parallel.timeout_minutes=0.2 for each other\)", errors[0]), errors
    assert not TRAINER_TRACEBACK.search(err)
