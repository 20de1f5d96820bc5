"""The memory model and planner against real allocations, torch's own counts and GPT-3 175B."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from training.config import ConfigError, check_layout, load_config
from training.memory import (GIB, Layout, block_parameters, check_fits, estimate_memory, estimate_stages,
                             stage_layers)
from training.metrics import training_flops_per_token
from tests.training.saved_memory import block_probe
from tools.plan import main as plan_main
from tools.plan import plan
from tools.plan_cost import Cluster, model_flops, step_cost

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny/gpt3_tiny.yaml"
GPT3_175B = ROOT / "configs/gpt3/175b.yaml"
A100_1024 = Cluster(nodes=128, gpus_per_node=8, gpu_memory_gb=80)


class Block(nn.Module):
    """A pre-LayerNorm GPT block with the parameter shapes of the trainer's blocks at TP=1."""

    def __init__(self, h: int, inner: int, ffn: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * inner), nn.Linear(inner, h)
        self.fc1, self.fc2 = nn.Linear(h, ffn), nn.Linear(ffn, h)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, -1))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class ReferenceGPT(nn.Module):
    """Token + position embeddings, blocks, final LayerNorm, output tied to the token embedding."""

    def __init__(self, config):
        super().__init__()
        m = config.model
        h = m.d_model
        self.wte = nn.Embedding(m.padded_vocab_size(1), h)
        self.wpe = nn.Embedding(m.seq_length, h)
        self.blocks = nn.ModuleList(
            Block(h, m.n_heads * m.head_dim, m.ffn_multiplier * h, m.n_heads) for _ in range(m.n_layers))
        self.ln_f = nn.LayerNorm(h)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


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


def _measure(launcher: list[str], overrides: list[str], port: int) -> list[dict]:
    """What the trainer's engine allocates, per rank (tools/plan_measure)."""
    result = subprocess.run(
        [*launcher, "-m", "tools.plan_measure", "--config", str(TINY), "--set", "model.vocab_size=50257",
         *overrides], cwd=ROOT, env={**os.environ, "MASTER_PORT": str(port)},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_within_10_percent(ranks: list[dict]) -> None:
    for rank in ranks:
        for part, measured in rank["measured"].items():
            predicted = rank["predicted"][part]
            assert measured > 0
            assert abs(predicted - measured) <= 0.10 * measured, (rank["rank"], part, measured, predicted)


def test_prediction_matches_what_the_trainer_allocates():
    """One process, bf16, ZeRO-1: parameters, gradients and optimizer states."""
    (rank,) = _measure([sys.executable], ["precision=bf16", "parallel.zero_stage=1"], 29541)
    _assert_within_10_percent([rank])


@pytest.mark.multiproc
def test_prediction_matches_the_trainer_per_pipeline_stage():
    """TP2 x PP2: each rank's shard of its stage, the tied embedding copy on the last stage."""
    ranks = _measure([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
                      "--master-port", "29542"], ["precision=bf16", "parallel.tp=2", "parallel.pp=2"], 29542)
    assert sorted(r["stage"] for r in ranks) == [0, 0, 1, 1]
    _assert_within_10_percent(ranks)


@pytest.mark.multiproc
def test_prediction_matches_the_trainer_with_zero_sharding_over_data_parallel():
    """DP2, ZeRO-1: each rank holds half the fp32 master weights and Adam moments."""
    ranks = _measure([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                      "--master-port", "29543"], ["precision=bf16", "parallel.zero_stage=1"], 29543)
    _assert_within_10_percent(ranks)
    unsharded = estimate_stages(tiny("precision=bf16"), Layout(1, 1, 1, 2, 1, False))[0].optimizer
    assert all(abs(r["measured"]["optimizer"] - unsharded / 2) <= 0.01 * unsharded for r in ranks)


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


def test_banded_layers_count_their_window_of_keys_not_the_sequence():
    """GPT-3's banded layers: the trainer's MFU count and the planner drop exactly the attention FLOPs
    that torch's FLOP counter saves between every query attending all keys (how dense causal layers
    are counted) and every query attending exactly its window of keys (the band's model FLOPs)."""
    banded, dense = tiny(), tiny("model.sparse_every=0")
    m = banded.model
    batch, s, window = 2, m.seq_length, m.sparse_window
    q, k, v = (torch.randn(batch, m.n_heads, s, m.head_dim, requires_grad=True) for _ in range(3))

    def counted(attend) -> int:  # forward and backward
        with FlopCounterMode(display=False) as counter:
            attend().sum().backward()
        return counter.get_total_flops()

    def windows(x):  # [batch, heads, s, head_dim, window]: keys i - window + 1 .. i of query i (zeros before 0)
        return nn.functional.pad(x, (0, 0, window - 1, 0)).unfold(2, window, 1)

    every_key = counted(lambda: (q @ k.transpose(-1, -2)).softmax(-1) @ v)
    band = counted(lambda: (q.unsqueeze(-2) @ windows(k)).softmax(-1) @ windows(v).transpose(-1, -2))
    sparse_layers = sum(m.is_sparse_layer(layer) for layer in range(m.n_layers))
    saved_per_token = sparse_layers * (every_key - band) / (batch * s)
    assert 0 < sparse_layers < m.n_layers and window < s
    assert training_flops_per_token(dense.model) - training_flops_per_token(m) == pytest.approx(saved_per_token)
    tokens = 8 * s  # the planner's count (d_model = heads x head_dim here, as it assumes)
    assert model_flops(dense, tokens) - model_flops(banded, tokens) == pytest.approx(tokens * saved_per_token)


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


@pytest.mark.parametrize("flag, value, problem", [
    ("--nodes", "0", "must be positive"), ("--gpus-per-node", "0", "must be positive"),
    ("--gpu-memory-gb", "0", "must be positive"), ("--compute-efficiency", "1.5", "is a fraction of peak, at most 1"),
])
def test_cli_refuses_a_cluster_that_is_not_one_in_one_line(capsys, flag, value, problem):
    """Zero GPUs or memory used to plan nothing and then blame the config ("no layout fits")."""
    assert plan_main(["--config", str(TINY), flag, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"gpt-plan: error: {flag} {problem}, got {value}\n"


def test_planner_offers_no_layout_with_a_stage_of_embeddings_only():
    """4 layers on 4 stages leaves the first and last stage without a block, which the trainer refuses."""
    from tools.plan import layouts

    assert {layout.pp for layout in layouts(tiny(), 4, max_tp=1)} == {1, 2}


@pytest.mark.parametrize("banded", [False, True], ids=["dense", "banded"])
def test_block_activations_are_what_autograd_keeps(banded):
    """A block's activations as PyTorch keeps them for backward (fused SDPA: no seq x seq scores), on CPU at
    dropout 0, where the CPU's fused kernel runs as the GPU's do with or without dropout (with dropout the CPU
    falls back to materialised scores; the memory model is a GPU's). Dense: the prediction to 1%. Banded: an
    upper bound (it counts overlapping K/V blocks as copies, which a kernel may materialise; here they are
    views of one padded copy) that stays below the dense scores term it replaces."""
    config = tiny("precision=fp32", "model.dropout=0.0", "model.seq_length=1024", "model.d_model=256",
                  "model.n_heads=4", *(["model.sparse_every=1", "model.sparse_offset=0", "model.sparse_window=256"]
                                       if banded else ["model.sparse_every=0"]))
    measured, predicted = block_probe(config, "cpu", torch.float32)
    scores = 4 * 1024 * 1024 * 2 * 4  # a s^2 b e: what eq. 2 counted for the scores alone
    if banded:
        assert measured <= predicted < measured + scores / 2, (measured, predicted)
    else:
        assert abs(predicted - measured) <= 0.01 * measured, (measured, predicted)
