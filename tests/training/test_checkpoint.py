"""Exact resume and fault tolerance of one training process: stop/resume, SIGTERM, SIGKILL mid-save, NaN steps,
loss spikes and the stop policy.

Every interrupted run must reproduce the uninterrupted run's per-step losses bit for bit
(fp32, dropout on, so the RNG streams are part of what is restored).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.training.launch import REPO, TINY, losses, read_metrics, run_pretrain
from training.checkpoint_files import ShardReader, check_files, read_manifest

pytestmark = pytest.mark.multiproc

COMMON = ["train.steps=8", "model.dropout=0.1", "model.make_vocab_size_divisible_by=1024",
          "data.blend=tests/data/tokens/blend2.json", "logging.eval_iters=1", "precision=fp32"]


def manifest(run_dir, tag=None) -> dict:
    ckpt = run_dir / "checkpoints"
    tag = tag or (ckpt / "latest").read_text().strip()
    return json.loads((ckpt / tag / "manifest.json").read_text())


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    run_pretrain(run_dir, 1, COMMON)
    return run_dir


@pytest.fixture(scope="module")
def straight(straight_run):
    return losses(straight_run)


def test_stop_and_resume_is_bitwise_identical(straight, tmp_path):
    run_pretrain(tmp_path, 1, COMMON + ["train.exit_interval=4"])
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]
    saved = manifest(tmp_path)
    assert saved["trainer"]["step"] == 4 and saved["trainer"]["consumed_samples"] == 32
    assert saved["trainer"]["tokens"] == 32 * 64
    result = run_pretrain(tmp_path, 1, COMMON + ["train.exit_interval=4"])  # the same command, no resume flag
    assert "resumed from" in result.stdout
    assert losses(tmp_path) == straight
    assert straight[8] < straight[1] - 0.5


def test_sigterm_finishes_the_step_saves_and_exits_zero(straight, tmp_path):
    command = [sys.executable, "-m", "training.pretrain", "--config", str(TINY), "--run-dir", str(tmp_path),
               "--set", "logging.tensorboard=false", *COMMON]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    stopped = manifest(tmp_path)["trainer"]["step"]
    assert 2 <= stopped < 8, out
    assert "stopping after step" in out
    run_pretrain(tmp_path, 1, COMMON)
    assert losses(tmp_path) == straight


def test_sigkill_during_save_leaves_previous_checkpoint(straight, tmp_path):
    killed = run_pretrain(tmp_path, 1, COMMON + ["checkpoint.interval=2"], check=False,
                          env={"GPT_FAULT_KILL_IN_SAVE": "4"})
    assert killed.returncode == -signal.SIGKILL
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000002"
    assert (ckpt / "step00000004.partial").is_dir() and not (ckpt / "step00000004.partial" / "manifest.json").exists()
    run_pretrain(tmp_path, 1, COMMON + ["checkpoint.interval=2", "checkpoint.keep_last=2", "checkpoint.keep_every=4"])
    assert losses(tmp_path) == straight
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step00000004", "step00000006", "step00000008"]


def test_nan_steps_are_skipped_then_rolled_back(straight, tmp_path):
    run_pretrain(tmp_path, 1, COMMON + ["checkpoint.interval=2", "train.bad_step_limit=2"],
                 env={"GPT_FAULT_NAN_STEPS": "3,5,6"})
    records = read_metrics(tmp_path)[0]
    steps = [(r["step"], r["bad_step"], r["bad_steps"]) for r in records]
    # step 3 alone is skipped; 5 and 6 in a row trigger a rollback to step 4 with samples 32..48 skipped;
    # the count keeps the rolled-back bad steps
    assert steps == [(1, False, 0), (2, False, 0), (3, True, 1), (4, False, 1), (5, True, 2), (6, True, 3),
                     (5, False, 3), (6, False, 3), (7, False, 3), (8, False, 3)]
    assert records[2]["loss"] != records[2]["loss"]  # NaN
    assert [r["loss"] for r in records[:2]] == [straight[1], straight[2]]
    final = manifest(tmp_path)["trainer"]
    assert final["skipped_windows"] == [[32, 48]] and final["consumed_samples"] == 8 * 8 + 16
    assert records[-1]["loss"] < records[0]["loss"] - 0.3  # the skipped NaN steps left the model sound
    assert final["guard"]["total"] == 3


def test_loss_spike_is_skipped_and_bad_steps_stop_the_run(straight, tmp_path):
    result = run_pretrain(tmp_path, 1, COMMON + ["checkpoint.interval=2", "train.spike_threshold=2",
                                                 "train.spike_window=2", "train.bad_step_limit=2",
                                                 "train.bad_step_policy=stop"],
                          check=False, env={"GPT_FAULT_SPIKE_STEPS": "3,6", "GPT_FAULT_NAN_STEPS": "5"})
    records = read_metrics(tmp_path)[0]
    # spike at 3: skipped and counted; then NaN at 5 and a spike at 6 are two bad steps in a row: stop
    assert [(r["step"], r["bad_step"], r["bad_steps"]) for r in records] == [
        (1, False, 0), (2, False, 0), (3, True, 1), (4, False, 1), (5, True, 2), (6, True, 3)]
    assert [r["loss"] for r in records[:2]] == [straight[1], straight[2]]
    spike, running_mean = records[2]["loss"], (straight[1] + straight[2]) / 2
    assert 2 * running_mean < spike < float("inf")
    assert records[3]["loss"] != straight[4]  # the model at step 4 had not taken step 3's update
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = tmp_path / "checkpoints" / "step00000004"
    assert result.stderr.strip().splitlines()[-1] == (
        "training.pretrain: error: 2 bad steps in a row (NaN/Inf or spiking loss) up to step 6; stopping "
        f"(train.bad_step_policy=stop); last checkpoint: {last}")
    saved = read_manifest(tmp_path / "checkpoints")
    assert saved["path"] == str(last) and check_files(saved) == []
    assert saved["trainer"]["skipped_steps"] == 1 and saved["trainer"]["adam_step"] == 3
    assert saved["trainer"]["guard"]["total"] == 1
    assert all(torch.isfinite(t).all() for t in ShardReader(saved).state_dict().values())


def test_corrupt_or_mismatched_checkpoint_is_refused(straight_run, tmp_path):
    shutil.copytree(straight_run / "checkpoints", tmp_path / "a" / "checkpoints")
    shutil.copytree(straight_run / "checkpoints", tmp_path / "b" / "checkpoints")
    broken = tmp_path / "a" / "checkpoints" / "step00000008" / "state" / "pp0-tp0-dp0.pt"
    data = bytearray(broken.read_bytes())
    data[len(data) // 3] ^= 0x01
    broken.write_bytes(bytes(data))
    result = run_pretrain(tmp_path / "a", 1, COMMON, check=False)
    assert result.returncode == 2
    assert "state/pp0-tp0-dp0.pt fails its checksum" in result.stderr
    result = run_pretrain(tmp_path / "b", 1, COMMON + ["model.d_model=128"], check=False)
    assert result.returncode == 2
    assert "has model.d_model=64 but the config says model.d_model=128" in result.stderr
