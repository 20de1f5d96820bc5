"""The memory model and planner against real allocations, torch's own counts and GPT-3 175B."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, check_layout, load_config
from training.memory import GIB, Layout, block_parameters, check_fits, estimate_memory, stage_layers
from tools.plan import main as plan_main
from tools.plan import plan
from tools.plan_cost import Cluster, step_cost
from tools.plan_measure import ReferenceGPT

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny/gpt3_tiny.yaml"
GPT3_175B = ROOT / "configs/gpt3/175b.yaml"
A100_1024 = Cluster(nodes=128, gpus_per_node=8, gpu_memory_gb=80)


def tiny(*overrides):
    return load_config(TINY, ["model.vocab_size=50257", *overrides])


def test_parameters_match_a_torch_module_of_the_same_shape():
    config = tiny()
    model = ReferenceGPT(config)
    counted = sum(p.numel() for p in model.parameters())
    (params, blocks, _, _), = stage_layers(config, tp=1, pp=1)
    assert params == counted == config.model.num_parameters()
    assert blocks == config.model.n_layers
    one_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert block_parameters(config, 1) == one_block
    # Split by TP: the sharded weights sum to the whole, LayerNorms and row biases are replicated.
    h = config.model.d_model
    assert 2 * block_parameters(config, 2) == one_block + 6 * h
    # Cut by PP: every block lands on exactly one stage; the tied embedding is held twice.
    stages = stage_layers(config, tp=1, pp=2)
    assert sum(s[1] for s in stages) == config.model.n_layers
    assert sum(s[0] for s in stages) == counted + model.wte.weight.numel()


def test_adam_state_matches_torch():
    config = tiny()
    model = ReferenceGPT(config)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randint(0, 50257, (2, config.model.seq_length))).backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for t in s.values() if t.dim() > 0)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    # Plain Adam in fp32 without ZeRO keeps only the two moments (no master copy).
    predicted = estimate_memory(config, Layout(1, 1, 1, 2, zero_stage=0, activation_checkpointing=False))
    assert predicted.optimizer == state
    assert predicted.gradients == grads


@pytest.mark.parametrize("precision,zero", [("fp32", 1), ("bf16", 2)])
def test_prediction_matches_what_deepspeed_allocates(precision, zero):
    """Parameters, gradients and optimizer states counted from DeepSpeed's live tensors."""
    env = {**os.environ, "MASTER_PORT": str(29540 + zero)}
    result = subprocess.run(
        [sys.executable, "-m", "tools.plan_measure", "--config", str(TINY), "--set", "model.vocab_size=50257",
         f"precision={precision}", f"parallel.zero_stage={zero}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    for part in ("parameters", "gradients", "optimizer"):
        measured, predicted = numbers["measured"][part], numbers["predicted"][part]
        assert measured > 0
        assert abs(predicted - measured) <= 0.10 * measured, (part, measured, predicted)


def test_activation_checkpointing_and_zero_shrink_memory_as_expected():
    config = tiny("precision=bf16")
    full = estimate_memory(config, Layout(1, 1, 4, 2, 1, False))
    recomputed = estimate_memory(config, Layout(1, 1, 4, 2, 1, True))
    assert recomputed.activations < full.activations
    zero3 = estimate_memory(config, Layout(1, 1, 4, 2, 3, False))
    assert zero3.parameters < full.parameters and zero3.optimizer == full.optimizer


def test_gpt3_175b_on_1024_a100_80gb():
    config = load_config(GPT3_175B)
    candidates = plan(config, A100_1024)
    fitting = [c for c in candidates if c.fits]
    assert fitting, "no layout of 175B fits 1024 A100-80GB"
    assert all(c.memory.peak <= (80 - 4) * GIB for c in fitting)
    # Megatron-LM's layout for GPT-3-sized models (TP8 x PP8, full recomputation) fits.
    megatron = Layout(8, 8, 16, 1, 1, True)
    assert any(c.layout == megatron for c in fitting)
    # Pure data parallelism with ZeRO-1 does not: a full 175B replica per GPU.
    pure_dp = estimate_memory(load_config(GPT3_175B, ["train.rampup_start_batch_size=0"]),
                              Layout(1, 1, 1024, 1, 1, True))
    assert pure_dp.parameters > 300 * GIB and pure_dp.peak > 80 * GIB
    # The best layout's overrides are valid trainer overrides for 1024 processes.
    best = fitting[0]
    chosen = load_config(GPT3_175B, best.layout.overrides())
    assert check_layout(chosen, 1024) == best.layout.dp
    assert check_fits(chosen, 1024, 80).peak == best.memory.peak
    assert 0.2 < best.cost.mfu < 0.6


def test_without_batch_ramp_tp1_pp1_is_rejected_by_memory():
    # A batch that 1024 data-parallel ranks can share, so that pure data parallelism is a candidate.
    config = load_config(GPT3_175B, ["train.rampup_start_batch_size=0", "train.global_batch_size=2048"])
    candidates = plan(config, A100_1024)
    pure_dp = [c for c in candidates if c.layout.tp == 1 and c.layout.pp == 1 and c.layout.zero_stage < 3]
    assert pure_dp and not any(c.fits for c in pure_dp)


def test_trainer_check_refuses_a_layout_that_cannot_fit():
    config = load_config(GPT3_175B, ["train.rampup_start_batch_size=0", "train.global_batch_size=2048",
                                     "parallel.tp=1", "parallel.pp=1"])
    with pytest.raises(ConfigError, match="needs .* GiB per GPU.*gpt-plan"):
        check_fits(config, 1024, 80)


def test_pipeline_bubble_is_p_minus_1_over_m():
    config = load_config(GPT3_175B)
    layout = Layout(8, 8, 16, 1, 1, True)
    cost = step_cost(config, layout, A100_1024)
    micro_batches = layout.grad_accumulation(config.train.global_batch_size)
    busy = cost.step_s - cost.bubble_s - cost.pp_comm_s - cost.dp_comm_s - cost.optimizer_s
    assert cost.bubble_s / busy == pytest.approx((8 - 1) / micro_batches)


def test_cli_prints_best_layout_as_overrides(capsys, tmp_path):
    out = tmp_path / "plan.json"
    assert plan_main(["--config", str(GPT3_175B), "--nodes", "128", "--gpus-per-node", "8",
                      "--gpu-memory-gb", "80", "--json", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("--set parallel.tp=")
    config = load_config(GPT3_175B, last.split()[1:])
    check_fits(config, 1024, 80)
    rows = json.loads(out.read_text())
    assert any(not r["fits"] for r in rows) and any(r["fits"] for r in rows)


def test_cli_reports_when_nothing_fits(capsys):
    assert plan_main(["--config", str(GPT3_175B), "--nodes", "1", "--gpus-per-node", "8"]) == 1
    assert "no layout fits" in capsys.readouterr().err
