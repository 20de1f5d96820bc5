"""GPT-3's banded (sparse) attention layers against dense causal ones, side by side in one run (CPU).

Forward + backward time of the attention itself (q, k, v -> output) at GPT-3 125M's head shape
(12 heads of 64) and context 2048, window 256: dense causal SDPA (the flash kernel), the
trainer's `banded_attention` (blocks of BAND_CHUNK queries), the old banded path (SDPA with a
dense [seq, seq] band mask) and, with --chunks, `banded_attention` at other block sizes; then
the whole attention layer (QKV and output projections included), dense vs banded. Variants
alternate repeat by repeat so that machine load hits all alike; medians of wall and of CPU
seconds (this process, all threads), the latter being steadier on a shared machine.
Goal: banded attention <= 0.5x dense causal.

    python bench/bench_attention.py [--batch 2] [--repeats 7] [--threads N] [--chunks 64,256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import model  # noqa: E402
from training.config import ModelConfig  # noqa: E402
from training.distributed import init_distributed  # noqa: E402

HEADS, HEAD_DIM, SEQ, WINDOW = 12, 64, 2048, 256


def forward_backward(attend, inputs: list[torch.Tensor], out_grad: torch.Tensor):
    def run() -> None:
        for x in inputs:
            x.grad = None
        attend(*inputs).backward(out_grad)
    return run


def variants(batch: int, chunks: list[int]) -> dict[str, Callable[[], None]]:
    generator = torch.Generator().manual_seed(0)
    qkv = [torch.randn(batch, HEADS, SEQ, HEAD_DIM, generator=generator, requires_grad=True) for _ in range(3)]
    out_grad = torch.randn(batch, HEADS, SEQ, HEAD_DIM, generator=generator)
    band = model.banded_causal_mask(SEQ, WINDOW)
    runs = {
        "dense causal (SDPA is_causal)": forward_backward(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv, out_grad),
        f"banded by blocks (chunk {min(WINDOW, model.BAND_CHUNK)})": forward_backward(
            lambda q, k, v: model.banded_attention(q, k, v, WINDOW), qkv, out_grad),
        "banded, old dense [seq, seq] mask": forward_backward(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=band), qkv, out_grad),
    }
    for c in chunks:
        runs[f"banded by blocks (chunk {c})"] = forward_backward(
            lambda q, k, v, c=c: model.banded_attention(q, k, v, WINDOW, chunk=c), qkv, out_grad)
    cfg = ModelConfig(arch="gpt3", n_layers=2, d_model=HEADS * HEAD_DIM, n_heads=HEADS, seq_length=SEQ,
                      vocab_size=50257, dropout=0.0, sparse_every=2, sparse_offset=1, sparse_window=WINDOW)
    x = [torch.randn(batch, SEQ, cfg.d_model, generator=generator, requires_grad=True)]
    layer_grad = torch.randn(batch, SEQ, cfg.d_model, generator=generator)
    for layer, name in ((0, "whole layer, dense"), (1, "whole layer, banded")):
        runs[name] = forward_backward(model.CausalSelfAttention(cfg, layer, seed=0), x, layer_grad)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant, after one warm-up")
    parser.add_argument("--chunks", default="", help="more BAND_CHUNK sizes to time, comma separated")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_distributed(tp=1, pp=1)
    runs = variants(args.batch, [int(c) for c in args.chunks.split(",") if c])
    load_before = os.getloadavg()[0]
    for run in runs.values():
        run()
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(f"batch {args.batch}, {HEADS} heads x {HEAD_DIM}, seq {SEQ}, window {WINDOW}, fp32, "
          f"{torch.get_num_threads()} threads, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"\n| {'variant':<36} | wall ms | vs dense | CPU ms | vs dense |\n|---|---:|---:|---:|---:|")
    for name in runs:
        dense = "whole layer, dense" if name.startswith("whole layer") else "dense causal (SDPA is_causal)"
        columns = [(statistics.median(t[name]), statistics.median(t[dense])) for t in (wall, cpu)]
        print(f"| {name:<36} |" + " |".join(f" {ms * 1e3:7.1f} | {ms / ref:7.2f}x" for ms, ref in columns) + " |")


if __name__ == "__main__":
    main()
