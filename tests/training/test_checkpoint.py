"""Exact resume and fault tolerance of one training process: stop/resume, SIGTERM, SIGKILL at every point of a
save, NaN steps, loss spikes and the stop policy; checkpoints that are damaged, foreign or crafted.

Every interrupted run must reproduce the uninterrupted run's per-step losses bit for bit
(fp32, dropout on, so the RNG streams are part of what is restored).
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tools.real_text_task import same_source
from tests.training.crafted import CreatesFile, craft
from tests.training.launch import REPO, TINY, losses, read_metrics, run_pretrain, stopped_as_it_starts
from tools.convert import main as gpt_convert
from tools.finetune import main as gpt_finetune
from tools.task_head import HEAD_FILE, INFO_KEY, FinetuneInfo, TaskHead, load_head
from tools.generate import main as gpt_generate
from training.checkpoint_files import CheckpointError, ShardReader, check_files, read_manifest, write_weights
from training.consolidated import ensure_single_process_groups, load_gpt
from training.distributed import shutdown

pytestmark = pytest.mark.multiproc

COMMON = ["train.steps=8", "model.dropout=0.1", "data.blend=tests/data/tokens/blend2.json", "logging.eval_iters=1",
          "precision=fp32"]


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


def test_bf16_stop_and_resume_is_bitwise_identical(tmp_path):
    """bf16 (GPT-3's configs): the fp32 master weights and Adam moments of DeepSpeed's 16-bit optimizer come back,
    and the resumed model is built without drawing weights (the checkpoint gives them all)."""
    overrides = [*COMMON, "precision=bf16", "train.steps=4"]
    run_pretrain(tmp_path / "straight", 1, overrides)
    for _ in range(2):
        run_pretrain(tmp_path / "resumed", 1, [*overrides, "train.exit_interval=2"])
    assert sorted(losses(tmp_path / "resumed")) == [1, 2, 3, 4]
    assert manifest(tmp_path / "resumed")["layout"]["precision"] == "bf16"
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


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


def test_a_stop_during_start_up_ends_the_run_before_its_first_step(tmp_path):
    """Slurm's USR1 reaching a rank while it starts (here: as soon as its main catches it, seconds before the
    model is built): exit 0 before the first step, nothing trained, nothing saved."""
    command = [sys.executable, "-m", "training.pretrain", "--config", str(TINY), "--run-dir", str(tmp_path),
               "--set", "logging.tensorboard=false", *COMMON]
    result = stopped_as_it_starts(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"stop asked for during start-up (signal {int(signal.SIGUSR1)}): exiting before step 1" in result.stdout
    assert not (tmp_path / "metrics.jsonl").exists() or not losses(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("step*"))  # a rerun starts where this one did


def test_a_kill_at_any_point_of_a_save_loses_no_complete_checkpoint(straight, tmp_path):
    """SIGKILL before and after the shard files, after the manifest, after the rename and after `latest` moved:
    `latest` never names an incomplete checkpoint, a complete one is never lost (a missing or lagging `latest` is
    recovered from, not a fresh start over it), and the reruns end on the uninterrupted run's losses."""
    ckpt, overrides = tmp_path / "checkpoints", COMMON + ["checkpoint.interval=2"]

    def killed_at(point: str) -> subprocess.CompletedProcess:
        result = run_pretrain(tmp_path, 1, overrides, check=False, env={"GPT_FAULT_KILL_IN_SAVE": point})
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        return result

    partial = ckpt / "step00000002.partial"
    killed_at("2:before-shards")
    assert partial.is_dir() and not any(partial.rglob("*.pt")) and not (ckpt / "latest").exists()
    killed_at("2")  # after the shard files, as the bare step always meant
    assert any(partial.rglob("*.pt")) and not (partial / "manifest.json").exists()
    killed_at("2:after-manifest")
    assert (partial / "manifest.json").exists() and not (ckpt / "latest").exists()
    killed_at("2:after-rename")  # complete, and no `latest`: a fresh start would overwrite it
    assert (ckpt / "step00000002" / "manifest.json").exists() and not (ckpt / "latest").exists()
    result = killed_at("4:after-latest")
    assert (f"{ckpt / 'latest'} is missing: continuing from the newest complete checkpoint, step00000002"
            in result.stdout)
    assert f"resumed from {ckpt / 'step00000002'} at step 2" in result.stdout
    assert (ckpt / "latest").read_text() == "step00000004"
    killed_at("6:after-rename")
    assert (ckpt / "latest").read_text() == "step00000004" and (ckpt / "step00000006" / "manifest.json").exists()
    result = run_pretrain(tmp_path, 1, overrides + ["checkpoint.keep_last=2", "checkpoint.keep_every=4"])
    assert "latest names step00000004, but step00000006 is newer" in result.stdout
    assert f"resumed from {ckpt / 'step00000006'} at step 6" in result.stdout
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
    foreign = tmp_path / "b" / "checkpoints"
    (foreign / "latest").unlink()  # and no `latest`: still not a fresh start over them
    before = {p: p.stat().st_mtime_ns for p in foreign.rglob("*")}
    result = run_pretrain(tmp_path / "b", 1, COMMON + ["model.d_model=128"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "has model.d_model=64 but the config says model.d_model=128")
    assert {p: p.stat().st_mtime_ns for p in foreign.rglob("*")} == before
    taken = tmp_path / "c" / "checkpoints" / "step00000002"  # not a checkpoint, but a save would have replaced it
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("mine")
    result = run_pretrain(tmp_path / "c", 1, COMMON + ["train.steps=2"], check=False)
    assert result.returncode == 2 and (taken / "notes.txt").read_text() == "mine"
    assert result.stderr.strip().splitlines()[-1] == (f"training.pretrain: error: checkpoint {taken} already exists; "
                                                      "not overwriting it (move it away to save step 2 here)")
    # Adam moments saved as None (what 16-bit runs without ZeRO wrote before they were refused): one line
    shutil.copytree(straight_run / "checkpoints", tmp_path / "d" / "checkpoints")
    holed = tmp_path / "d" / "checkpoints" / "step00000008"
    state = torch.load(holed / "state" / "pp0-tp0-dp0.pt", weights_only=True)
    state["final_norm.ln.weight"]["exp_avg"] = None
    craft(holed, "state/pp0-tp0-dp0.pt", state)
    result = run_pretrain(tmp_path / "d", 1, COMMON + ["train.steps=9"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("lacks final_norm.ln.weight/exp_avg")


# --------------------------------------------------------------------------- crafted checkpoints

@pytest.fixture
def process_group():
    """gpt-generate and gpt-finetune in this process, as tests/tools runs them."""
    ensure_single_process_groups()
    yield
    shutdown()


def refusals(checkpoint: Path, tmp_path: Path, capsys) -> list[str]:
    """The one-line errors of gpt-convert inspect, gpt-generate and gpt-finetune on a checkpoint (all must fail)."""
    task = same_source(tmp_path / "task", train=8, test=4)
    lines = []
    for tool, args in ((gpt_convert, ["inspect", "--input", str(checkpoint)]),
                       (gpt_generate, ["--checkpoint", str(checkpoint), "--prompt-ids", "1,2", "--max-new-tokens",
                                       "1"]),
                       (gpt_finetune, ["--checkpoint", str(checkpoint), "--task", str(task), "--output",
                                       str(tmp_path / "tuned")])):
        capsys.readouterr()
        assert tool(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        lines.append(err)
    return lines


def save_finetuned(directory: Path, weights: dict, model, head: TaskHead, info: FinetuneInfo) -> None:
    """A fine-tuned checkpoint as gpt-finetune wrote them before it trained on the engine: head.pt inside."""
    write_weights(directory, weights, dict.fromkeys(weights), {"model": dataclasses.asdict(model.cfg)}, 1, 1,
                  dict.fromkeys(weights, 0), model.cfg.padded_vocab_size(1), extra_files={HEAD_FILE: head.state_dict()},
                  extra={INFO_KEY: dataclasses.asdict(info)})


def test_a_pickle_in_a_checkpoint_is_never_unpickled(straight_run, tmp_path, capsys, process_group):
    """An RNG file, and a fine-tuned head, replaced by a pickle that creates a file when unpickled (the manifest
    re-signed to match): resume and the tools refuse it in one line and the file is never created."""
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(straight_run / "checkpoints", run / "checkpoints")
    rng = run / "checkpoints" / "step00000008"
    craft(rng, "rng/rank00000.pt", {"python": CreatesFile(marker)})
    result = run_pretrain(run, 1, COMMON + ["train.steps=10"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = (f"checkpoint {rng}: file rng/rank00000.pt holds more than tensors and plain values (unpickling it "
                "would call io.open); refusing to load it")
    assert result.stderr.strip().splitlines()[-1] == f"training.pretrain: error: {expected}"
    assert all(line.endswith(expected) for line in refusals(run / "checkpoints", tmp_path, capsys))
    assert not marker.exists()

    model = load_gpt(straight_run / "checkpoints")[0]
    weights = {name: p.detach() for name, p in model.named_parameters()}
    info, tuned = FinetuneInfo("t", "similarity", 2, 50257, 50258, 50259, 64), tmp_path / "finetuned"
    save_finetuned(tuned, weights, model, TaskHead(64, 2), info)
    assert load_head(tuned, model)[1] == info
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):  # never overwritten
        save_finetuned(tuned, weights, model, TaskHead(64, 2), info)
    craft(tuned / "step00000000", "head.pt", {"linear.weight": CreatesFile(marker)})
    expected = "file head.pt holds more than tensors and plain values (unpickling it would call io.open)"
    assert all(expected in line for line in refusals(tuned, tmp_path, capsys))
    result = run_pretrain(tmp_path / "from_tuned", 1, COMMON + [f"checkpoint.load={tuned}"], check=False)
    assert result.returncode == 2 and expected in result.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_names_in_a_checkpoint_stay_inside_it(straight_run, tmp_path, capsys, process_group):
    """A `latest` reading `../elsewhere` and a manifest naming `../../x.pt` (a real copy of the shard, with its
    size and checksum: only the name is wrong) are refused in one line; a `latest` naming a missing tag too."""
    source = straight_run / "checkpoints" / "step00000008"
    pointed = tmp_path / "pointed" / "checkpoints"
    shutil.copytree(source, tmp_path / "pointed" / "elsewhere")
    pointed.mkdir()
    (pointed / "latest").write_text("../elsewhere")
    outside = tmp_path / "listed" / "checkpoints" / "step00000008"
    shutil.copytree(source, outside)
    shutil.copy(source / "state" / "pp0-tp0-dp0.pt", tmp_path / "listed" / "x.pt")
    manifest = json.loads((outside / "manifest.json").read_text())
    manifest["files"]["../../x.pt"] = manifest["files"].pop("state/pp0-tp0-dp0.pt")
    for info in manifest["params"].values():
        info["shards"] = ["../../x.pt"]
    (outside / "manifest.json").write_text(json.dumps(manifest))
    dangling = tmp_path / "dangling" / "checkpoints"
    dangling.mkdir(parents=True)
    (dangling / "latest").write_text("step00000030")
    for directory, message in (
            (pointed, f"checkpoint {pointed}: latest names '../elsewhere', which is not a plain name inside it; "
                      "refusing it"),
            (outside, f"checkpoint {outside}: its manifest names file '../../x.pt', which is not a plain name "
                      "inside it; refusing it"),
            (dangling, f"{dangling / 'latest'} names step00000030, which does not exist")):
        for line in refusals(directory, tmp_path, capsys):
            assert line.endswith(message), line
        with pytest.raises(CheckpointError, match="refusing it|does not exist"):
            load_gpt(directory)
