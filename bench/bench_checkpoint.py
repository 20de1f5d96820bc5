"""Checkpoint save/load time, size on disk, and the memory a save needs beyond the model state.

GPT-3 125M and 350M (their real shapes, context cut to 256 to keep the CPU step short),
one process, fp32, ZeRO-1, after one optimizer step so the Adam moments exist. Save and
load go through `training.checkpoint` exactly as the trainer calls it; the extra memory is
the peak resident-set growth during the save, measured against the RSS before it.

    python bench/bench_checkpoint.py [--sizes 125m,350m]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class PeakRSS:
    """Samples this process's RSS every millisecond while the block runs."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def measure(size: str, work: Path) -> dict:
    import torch

    from training import checkpoint
    from training.checkpoint_files import read_manifest
    from training.config import load_config
    from training.distributed import init_distributed, shutdown
    from training.parallel import ParallelEngine
    from training.rng import seed_everything

    cfg = load_config(REPO / f"configs/gpt3/{size}.yaml", [
        "model.seq_length=256", "model.dropout=0.0", "precision=fp32", "train.global_batch_size=1",
        "train.micro_batch_size=1", "train.rampup_start_batch_size=0", "parallel.activation_checkpointing=false",
        "model.sparse_every=0",
    ])
    layout = init_distributed(1, 1)
    seed_everything(0, 0, 0, 0)
    engine = ParallelEngine(cfg, layout, 1)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, cfg.model.seq_length))
    engine.train_step([(tokens, tokens)])
    state = {"step": 1, "tokens": 256, "consumed_samples": 1, "skipped_windows": []}
    directory = work / size
    with PeakRSS() as rss:
        start = time.perf_counter()
        path = checkpoint.save(engine, cfg, layout, directory, state)
        save_s = time.perf_counter() - start
    size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    manifest = read_manifest(directory)
    start = time.perf_counter()
    checkpoint.load(engine, cfg, layout, manifest)
    load_s = time.perf_counter() - start
    result = {"size": size, "parameters": cfg.model.num_parameters(), "save_s": save_s, "load_s": load_s,
              "bytes": size_bytes, "save_extra_rss": rss.peak - rss.start}
    shutil.rmtree(directory)
    shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="125m,350m")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rows.append(measure(size, Path(tmp)))
    print(f"\n{'model':<8}{'params':>10}{'save s':>9}{'load s':>9}{'on disk':>11}{'bytes/param':>13}"
          f"{'save extra RSS':>16}")
    for r in rows:
        print(f"{r['size']:<8}{r['parameters'] / 1e6:>9.0f}M{r['save_s']:>9.2f}{r['load_s']:>9.2f}"
              f"{r['bytes'] / 2**20:>9.0f}MiB{r['bytes'] / r['parameters']:>13.1f}"
              f"{r['save_extra_rss'] / 2**20:>13.0f}MiB")
    print(f"(peak RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB)")


if __name__ == "__main__":
    main()
