"""Mixed precision (bf16, fp16 with dynamic loss scaling) across layouts, and activation recomputation."""
import json
import os
import subprocess
import sys

import pytest

from tests.training.launch import REPO, free_port, max_relative_difference, read_metrics, run_pretrain

pytestmark = pytest.mark.multiproc

BASE = ["train.steps=6", "logging.eval_iters=1"]


@pytest.mark.parametrize("precision, layout, tolerance", [
    pytest.param("fp16", ["parallel.tp=2"], 1e-4, id="fp16-tp2"),
    pytest.param("bf16", ["parallel.pp=2"], 1e-3, id="bf16-pp2"),
])
def test_mixed_precision_trains_and_matches_one_process(tmp_path, precision, layout, tolerance):
    common = BASE + [f"precision={precision}", "model.dropout=0.0"]
    run_pretrain(tmp_path / "one", 1, common)
    run_pretrain(tmp_path / "two", 2, common + layout)
    one, _ = read_metrics(tmp_path / "one")
    two, _ = read_metrics(tmp_path / "two")
    losses = [r["loss"] for r in two]
    assert losses[-1] < losses[0] - 0.3
    assert max_relative_difference([r["loss"] for r in one], losses) < tolerance
    if precision == "fp16":
        assert two[0]["loss_scale"] == 2.0**16  # dynamic scaling starts at 2^16 ...
        assert all(r["skipped_steps"] == 0 for r in two)  # ... and no step overflowed
    else:
        assert all(r["loss_scale"] == 1.0 for r in two)


def test_recomputation_with_dropout_is_exact_in_the_pipeline(tmp_path):
    """Recomputed blocks replay the same dropout masks (shared and TP-local streams)."""
    common = BASE + ["precision=fp32", "model.dropout=0.1", "parallel.pp=2"]
    run_pretrain(tmp_path / "stored", 2, common + ["parallel.activation_checkpointing=false"])
    run_pretrain(tmp_path / "recomputed", 2, common + ["parallel.activation_checkpointing=true"])
    stored, _ = read_metrics(tmp_path / "stored")
    recomputed, _ = read_metrics(tmp_path / "recomputed")
    assert [r["loss"] for r in stored] == [r["loss"] for r in recomputed]


def test_batch_size_ramp_runs_in_both_engines(tmp_path):
    """GPT-3's ramp changes gradient accumulation mid-run; the pipeline and plain engines agree."""
    ramp = BASE + ["precision=fp32", "model.dropout=0.0", "train.global_batch_size=8",
                   "train.rampup_start_batch_size=4", "train.rampup_batch_increment=2", "train.rampup_tokens=768"]
    run_pretrain(tmp_path / "one", 1, ramp)
    run_pretrain(tmp_path / "pp2", 2, ramp + ["parallel.pp=2"])
    one, _ = read_metrics(tmp_path / "one")
    pp2, _ = read_metrics(tmp_path / "pp2")
    assert [r["batch_size"] for r in one] == [4, 4, 6, 8, 8, 8]  # 384 tokens per +2 sequences
    assert [r["batch_size"] for r in pp2] == [r["batch_size"] for r in one]
    assert max_relative_difference([r["loss"] for r in one], [r["loss"] for r in pp2]) < 1e-5


def test_dropout_masks_under_tensor_parallelism(tmp_path):
    """TP2 on CPU: TP-local masks differ per rank, masks on replicated activations agree (probe's doc)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "tests.training.tp_dropout_probe"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["replicated_parameters"] > 10
    assert probe == {**probe, "local_draws_differ": True, "shared_draws_equal": True,
                     "replicated_grads_equal": True, "dropout_changed_grads": True}
