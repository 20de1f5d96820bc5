"""On a GPU: the trainer on CUDA/NCCL, bf16 on the GPU against fp32 on the CPU, generation on CUDA.

Skipped without CUDA (CI has none); `bench/gpu_acceptance.sh` runs these on a GPU machine."""
from __future__ import annotations

import json

import pytest
import torch

from tests.training.launch import losses, max_relative_difference, read_metrics, run_pretrain

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
STEPS = ["train.steps=10", "logging.eval_interval=0", "tf32=false"]  # fp32 means fp32 unless a test says bf16
ON_CPU = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpu") / "fp32"
    run_pretrain(run_dir, overrides=STEPS)
    return run_dir


def test_trainer_runs_on_cuda_with_nccl(gpu_run):
    environment = json.loads((gpu_run / "environment.json").read_text())
    assert environment["layout"]["device"] == "cuda"
    assert "cuda:nccl" in environment["layout"]["backend"] and "cpu:gloo" in environment["layout"]["backend"]
    records, _ = read_metrics(gpu_run)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["mfu"] is None or 0 < records[-1]["mfu"] < 1  # null only on a GPU missing from the table


@pytest.fixture(scope="module")
def cpu_losses(tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("cpu") / "fp32"
    run_pretrain(run_dir, overrides=STEPS, env=ON_CPU)
    return list(losses(run_dir).values())


def test_fp32_on_gpu_equals_fp32_on_cpu(gpu_run, cpu_losses):
    """Same model, data and seed: only the kernels differ."""
    assert max_relative_difference(cpu_losses, list(losses(gpu_run).values())) < 1e-4


def test_bf16_on_gpu_follows_fp32_on_cpu(cpu_losses, tmp_path):
    run_pretrain(tmp_path / "bf16", overrides=[*STEPS, "precision=bf16"])
    assert max_relative_difference(cpu_losses, list(losses(tmp_path / "bf16").values())) < 3e-2


def test_greedy_generation_on_cuda_equals_cpu(gpu_run):
    from training.consolidated import load_gpt
    from training.generation import Sampling, generate

    torch.backends.cuda.matmul.allow_tf32 = False
    prompts = [[464, 2068, 7586, 21831], [15496, 11, 995]]
    tokens = {}
    for device in ("cpu", "cuda"):
        model, _ = load_gpt(gpu_run / "checkpoints", device=device)
        tokens[device] = generate(model, prompts, 24, Sampling(greedy=True))
    assert tokens["cuda"] == tokens["cpu"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tp2_on_two_gpus_equals_one_gpu(gpu_run, tmp_path):
    run_pretrain(tmp_path / "tp2", nproc=2, overrides=[*STEPS, "parallel.tp=2"])
    one = losses(gpu_run)
    assert max_relative_difference(list(one.values()), list(losses(tmp_path / "tp2").values())) < 1e-4


@pytest.mark.parametrize("banded", [False, True], ids=["dense", "banded"])
def test_block_activations_on_cuda_are_what_autograd_keeps(banded):
    """The memory model (what `check_fits` refuses layouts by) against what autograd keeps for one block on
    the GPU, in bf16 with dropout: SDPA's fused kernels keep no seq x seq scores. Dense to 2%; banded layers
    (mask and K/V blocks: the memory-efficient kernel) within the model's upper bound."""
    from tests.test_plan import tiny
    from tests.training.saved_memory import block_probe

    config = tiny("precision=bf16", "model.dropout=0.1", "model.seq_length=2048", "model.d_model=512",
                  "model.n_heads=8", *(["model.sparse_every=1", "model.sparse_offset=0", "model.sparse_window=256"]
                                       if banded else ["model.sparse_every=0"]))
    measured, predicted = block_probe(config, "cuda", torch.bfloat16)
    if banded:
        assert measured <= predicted, (measured, predicted)
    else:
        assert abs(predicted - measured) <= 0.02 * measured, (measured, predicted)
