"""Trainer benchmarks, measured side by side in one run (CPU).

1. Single-process step time: our trainer (megatron-core layers in a DeepSpeed engine,
   ZeRO-1, fp32) against a plain PyTorch loop over Hugging Face `GPT2LMHeadModel` of the
   same shape, same batch, AdamW. Steps alternate between the two so that machine load
   hits both alike. Goal: overhead <= 5%.
2. Tokens/s of `training.pretrain` for 1, 2, 4, 8 processes (DP, TP, PP and 3D layouts)
   at a fixed global batch.

    python bench/bench_trainer.py [--steps 12] [--skip-scaling]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = dict(n_layers=4, d_model=256, n_heads=8, seq_length=128)
BATCH = 8


def our_step_times(steps: int, batches):
    from training.config import load_config
    from training.distributed import init_distributed
    from training.parallel import ParallelEngine
    from training.rng import seed_everything

    overrides = [f"model.{k}={v}" for k, v in SHAPE.items()] + [
        "model.vocab_size=50257", "model.sparse_every=0", "model.dropout=0.0",
        f"train.global_batch_size={BATCH}", f"train.micro_batch_size={BATCH}", "precision=fp32",
    ]
    cfg = load_config(REPO / "configs/tiny/gpt3_tiny.yaml", overrides)
    layout = init_distributed(1, 1)
    seed_everything(0, 0, 0, 0)
    engine = ParallelEngine(cfg, layout, BATCH)
    engine.set_lr(1e-4)

    def step(i):
        return engine.train_step([batches[i % len(batches)]])
    return step


def hf_step_times(batches):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=SHAPE["n_layers"], n_embd=SHAPE["d_model"], n_head=SHAPE["n_heads"],
                        n_positions=SHAPE["seq_length"], vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(i):
        tokens, labels = batches[i % len(batches)]
        logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def real_batches(count: int):
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    shards = [IndexedDataset(str(REPO / f"tests/data/tokens/{name}_gpt2_text_document")) for name in ("ccnet", "wiki")]
    # copy out of the memory maps before the shards close
    tokens = np.concatenate([np.array(shard[i], dtype=np.int64) for shard in shards for i in range(10)])
    seq = SHAPE["seq_length"]
    batches = []
    for b in range(count):
        rows = [tokens[(b * BATCH + r) * seq:(b * BATCH + r) * seq + seq + 1] for r in range(BATCH)]
        block = torch.tensor(np.stack(rows))
        batches.append((block[:, :-1].contiguous(), block[:, 1:].contiguous()))
    return batches


def single_process_comparison(steps: int) -> None:
    batches = real_batches(4)
    ours, theirs = our_step_times(steps, batches), hf_step_times(batches)
    times = {"ours": [], "hf": []}
    for i in range(steps + 2):  # 2 warm-up steps each, then alternate
        for name, step in (("ours", ours), ("hf", theirs)):
            start = time.perf_counter()
            step(i)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    ours_s, hf_s = statistics.median(times["ours"]), statistics.median(times["hf"])
    tokens = BATCH * SHAPE["seq_length"]
    print(f"\nsingle process, {SHAPE}, batch {BATCH} x {SHAPE['seq_length']} tokens, fp32, {steps} steps each")
    print(f"{'trainer':<34}{'median step s':>14}{'tokens/s':>12}")
    print(f"{'ours (megatron-core + DeepSpeed)':<34}{ours_s:>14.4f}{tokens / ours_s:>12,.0f}")
    print(f"{'HF GPT2LMHeadModel + AdamW':<34}{hf_s:>14.4f}{tokens / hf_s:>12,.0f}")
    print(f"overhead of ours: {100 * (ours_s / hf_s - 1):+.1f}% (goal <= +5%)")


LAYOUTS = [(1, []), (2, []), (2, ["parallel.tp=2"]), (2, ["parallel.pp=2"]),
           (4, ["parallel.tp=2"]), (8, ["parallel.tp=2", "parallel.pp=2"])]


def scaling(steps: int) -> None:
    from tests.training.launch import read_metrics, run_pretrain

    print(f"\nprocesses and layouts at global batch 8 x 64 tokens (tiny GPT-3, {steps} steps, "
          f"{os.cpu_count()} cores)")
    print(f"{'processes':>10}  {'layout':<16}{'median tokens/s':>16}")
    for nproc, layout in LAYOUTS:
        with tempfile.TemporaryDirectory() as tmp:
            run_pretrain(Path(tmp), nproc, [f"train.steps={steps}", "train.micro_batch_size=1",
                                            "logging.eval_iters=1", *layout])
            train, _ = read_metrics(Path(tmp))
        tp = int(next((x.split("=")[1] for x in layout if "tp=" in x), 1))
        pp = int(next((x.split("=")[1] for x in layout if "pp=" in x), 1))
        name = f"TP{tp} PP{pp} DP{nproc // (tp * pp)}"
        print(f"{nproc:>10}  {name:<16}{statistics.median(r['tokens_per_s'] for r in train[2:]):>16,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    single_process_comparison(args.steps)
    if not args.skip_scaling:
        scaling(args.steps)


if __name__ == "__main__":
    main()
