"""GPT-3's banded attention computed by blocks (`banded_attention`) against the dense-mask definition.

Run as a module under `torchrun --nproc-per-node 2` it is the TP2 side of the last test: it saves
rank 0's layer output and input gradient to the path given as its argument.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from tests.training.launch import REPO, free_port
from training.config import ModelConfig
from training.distributed import init_distributed, shutdown
from training.model import BAND_CHUNK, CausalSelfAttention, banded_attention, banded_causal_mask


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Textbook masked softmax attention over the whole [seq, seq] score matrix."""
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


# (seq, window): the window divides seq, does not, is 1 (only itself), covers seq, exceeds it;
# windows above BAND_CHUNK, a multiple of it or not, with seq not a multiple of the block.
CASES = [(24, 6), (24, 5), (23, 1), (24, 24), (10, 30), (300, 200), (520, 2 * BAND_CHUNK)]


@pytest.mark.parametrize("seq, window", CASES)
def test_blocks_equal_the_dense_band_forward_and_gradients(seq, window):
    generator = torch.Generator().manual_seed(seq * 1000 + window)
    q, k, v = (torch.randn(2, 3, seq, 8, generator=generator, requires_grad=True) for _ in range(3))
    out_grad = torch.randn(2, 3, seq, 8, generator=generator)
    blocked = banded_attention(q, k, v, window)
    dense = reference(q, k, v, banded_causal_mask(seq, window))
    torch.testing.assert_close(blocked, dense, rtol=1e-6, atol=1e-6)
    blocked_grads = torch.autograd.grad(blocked, (q, k, v), out_grad)
    dense_grads = torch.autograd.grad(dense, (q, k, v), out_grad)
    for got, expected in zip(blocked_grads, dense_grads):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_dropout_drops_band_weights_only_and_rescales_the_rest():
    """With one-hot values the output is the (dropped) attention matrix itself: every weight in
    the band is either 0 or its softmax weight / (1 - p), none outside, about p of them dropped."""
    seq, window, p = 40, 7, 0.5
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, seq, 8, generator=generator) for _ in range(2))
    values = torch.eye(seq).expand(2, 3, seq, seq)
    band = banded_causal_mask(seq, window)
    weights = reference(q, k, values, band)
    torch.manual_seed(1)
    dropped = banded_attention(q, k, values, window, dropout_p=p)
    kept = dropped != 0
    assert not kept[..., ~band].any()
    torch.testing.assert_close(dropped[kept], weights[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    assert 0.4 < 1 - kept[..., band].float().mean().item() < 0.6


def layer_config() -> ModelConfig:
    return ModelConfig(arch="gpt3", n_layers=2, d_model=32, n_heads=4, seq_length=24, vocab_size=300,
                       dropout=0.0, sparse_every=2, sparse_offset=1, sparse_window=5)


def sparse_layer_output_and_input_grad() -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1 (banded) of `layer_config` on a fixed input: its output and d(sum(out * g))/d(input)."""
    cfg = layer_config()
    layer = CausalSelfAttention(cfg, layer=1, seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.seq_length, cfg.d_model, generator=generator, requires_grad=True)
    out = layer(x)
    out.backward(torch.randn(out.shape, generator=generator))
    return out.detach(), x.grad


def test_tensor_parallel_layer_equals_one_process(tmp_path):
    """TP2 (2 gloo processes, 2 of the 4 heads each) gives the single-process layer's output and input gradient."""
    saved = tmp_path / "tp2.pt"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "tests.training.test_banded_attention", str(saved)],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tp2_out, tp2_grad = torch.load(saved)
    init_distributed(tp=1, pp=1)
    try:
        out, grad = sparse_layer_output_and_input_grad()
    finally:
        shutdown()
    torch.testing.assert_close(tp2_out, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tp2_grad, grad, rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
    init_distributed(tp=2, pp=1)
    tp_result = sparse_layer_output_and_input_grad()
    if dist.get_rank() == 0:
        torch.save(tp_result, sys.argv[1])
    shutdown()
