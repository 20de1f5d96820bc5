"""Tokens/s, TFLOP/s and MFU of GPT-3 sizes on one GPU at sequence 2048 in bf16 (part of bench/gpu_acceptance.sh).

    python bench/gpu_throughput.py --sizes 125m 350m --micro-batch 16 --output gpu_throughput.json

Each size trains `--steps` steps with `training.pretrain` on the bundled token shard (the
data's content does not matter for speed) without activation recomputation, so that MFU
counts model FLOPs only; the figures are medians over the steps after `--warmup`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(size: str, steps: int, micro_batch: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"gpu-{size}-") as run_dir:
        overrides = [
            "data.blend=tests/data/tokens/blend.json", "data.split=800,200,0", f"train.steps={steps}",
            f"train.global_batch_size={micro_batch}", f"train.micro_batch_size={micro_batch}",
            "train.rampup_start_batch_size=0", "parallel.activation_checkpointing=false", "precision=bf16",
            "logging.eval_interval=0", "logging.eval_iters=1", "logging.tensorboard=false",
        ]
        command = [sys.executable, "-m", "training.pretrain", "--config", f"configs/gpt3/{size}.yaml",
                   "--run-dir", run_dir, "--set", *overrides]
        subprocess.run(command, cwd=REPO, check=True)
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        environment = json.loads((Path(run_dir) / "environment.json").read_text())
    steady = [r for r in records if "loss" in r and r["step"] > warmup]
    median = {key: statistics.median(r[key] for r in steady) if all(r[key] is not None for r in steady) else None
              for key in ("tokens_per_s", "tflops", "mfu", "step_time_s")}
    return {"size": size, "device": environment["device_name"], "micro_batch": micro_batch, "steps": len(steady),
            "final_loss": steady[-1]["loss"], **median}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["125m", "350m"], help="configs/gpt3/<size>.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the medians")
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences of 2048 tokens per step")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = [measure(size, args.steps, args.micro_batch, args.warmup) for size in args.sizes]
    print(f"\n{'model':<8} {'GPU':<24} {'batch':>5} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'step s':>7}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"GPT-3 {r['size']:<3} {r['device'][:24]:<24} {r['micro_batch']:>5} {r['tokens_per_s']:>10,.0f} "
              f"{r['tflops']:>8.1f} {mfu:>6} {r['step_time_s']:>7.3f}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
