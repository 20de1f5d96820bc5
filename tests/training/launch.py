"""Run `training.pretrain` in fresh processes (1 with python, N with torchrun) and read its metrics."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "gpt3_tiny.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pretrain_command(run_dir: Path, nproc: int = 1, overrides: list[str] = (), config: Path = TINY,
                     launcher: str = "torch.distributed.run") -> list[str]:
    """One process with python, N with `launcher` (torchrun, or `training.torchrun` which takes its arguments)."""
    if nproc == 1:
        command = [sys.executable, "-m", "training.pretrain"]
    else:
        command = [sys.executable, "-m", launcher, "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "training.pretrain"]
    return command + ["--config", str(config), "--run-dir", str(run_dir), "--set", "logging.tensorboard=false",
                      *overrides]


def pretrain_env(env: dict | None = None) -> dict:
    """This environment for a launch: one thread per rank, warnings off unless `env` says otherwise, no rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def run_pretrain(run_dir: Path, nproc: int = 1, overrides: list[str] = (), config: Path = TINY,
                 timeout: int = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(pretrain_command(run_dir, nproc, overrides, config), cwd=REPO, env=pretrain_env(env),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "valid_loss" in r]


def max_relative_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a, (a, b)
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the last record of each step (a resumed run appends to metrics.jsonl)."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)[0]}


def resume_from(source_dir: Path, tag: str, run_dir: Path, nproc: int, overrides: list[str]) -> dict[int, float]:
    """A new run whose checkpoint directory holds only the source's checkpoint `tag`: it resumes by itself."""
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(source_dir / "checkpoints" / tag, run_dir / "checkpoints" / tag)
    (run_dir / "checkpoints" / "latest").write_text(tag)
    run_pretrain(run_dir, nproc, overrides)
    return losses(run_dir)


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(re.search(r"SigCgt:\s*([0-9a-f]+)", status)[1], 16) >> (sig - 1) & 1)


def stopped_as_it_starts(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` (a trainer) and send it SIGUSR1 as soon as it catches that signal, i.e. while it starts."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while process.poll() is None and not catches(process.pid, signal.SIGUSR1) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
