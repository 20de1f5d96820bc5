"""gpt-convert reshard's peak memory: weights read per output file vs the whole model in memory, side by side.

A random GPT checkpoint (--layers x --d-model, fp32, written at TP 2 x PP 2) is resharded to
TP 1 x PP --pp in fresh processes:

- ``reshard``: `gpt-convert reshard` as shipped: the checkpoint's files are memory-mapped and each
  output file's tensors are read (TP-merged) while that file is written (`ShardReader.lazy_state`).
- ``imports only``: the start-up both pay (torch, megatron-core), for reference.
- ``whole model``: the same conversion from `ShardReader.state_dict()`, every weight copied into
  memory first (what `reshard` did before; what a 175B model cannot afford: ~700 GB in fp32).

Each row is one child process: wall seconds, its peak RSS (which counts the page-cache pages of the
mapped checkpoint files it touched) and its peak anonymous memory (what it cannot give back), both
sampled from /proc. Both outputs must be the same files (xxh3 in the manifests).

    python bench/bench_reshard_memory.py [--layers 24] [--d-model 1024] [--pp 4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHOLE_MODEL = """
import sys
from tools.convert import write_layout
from training.checkpoint_files import ShardReader, verified_manifest
from training.consolidated import checkpoint_config
manifest = verified_manifest(sys.argv[1])
cfg = checkpoint_config(manifest)
cfg.model.make_vocab_size_divisible_by = 128
padded = cfg.model.padded_vocab_size(1)
write_layout(ShardReader(manifest, padded).state_dict(), cfg, sys.argv[2], 1, int(sys.argv[3]), padded)
"""


def source_checkpoint(directory: Path, layers: int, d_model: int) -> int:
    """A TP 2 x PP 2 checkpoint of random weights; returns its parameter count."""
    import torch

    from tools.convert import write_layout
    from training.config import Config
    from training.consolidated import ensure_single_process_groups
    from training.model import GPT

    ensure_single_process_groups()
    cfg = Config()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads = layers, d_model, d_model // 64
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in GPT(cfg.model, 0).named_parameters()}
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    write_layout(state, cfg, str(directory), 2, 2, cfg.model.padded_vocab_size(1))
    return sum(t.numel() for t in state.values())


def child(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MB, peak anonymous RSS MB) of one child process, sampled from /proc every 5 ms
    (ru_maxrss would count this process's memory at the fork). RSS includes the page-cache pages of
    memory-mapped files it touched, which the kernel can drop under pressure; anonymous memory is what it
    cannot do without."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL)
    peak = {"VmRSS:": 0, "RssAnon:": 0}
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            for key in peak:
                peak[key] = max(peak[key], int(status.split(key)[1].split()[0]))
        except (OSError, IndexError):  # between exec and exit
            pass
        time.sleep(0.005)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed")
    return time.perf_counter() - start, peak["VmRSS:"] / 1024, peak["RssAnon:"] / 1024


def file_digests(directory: Path) -> dict:
    manifest = json.loads(next(directory.glob("step*/manifest.json")).read_text())
    return {name: entry["xxh3"] for name, entry in manifest["files"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--pp", type=int, default=4, help="pipeline stages of the output (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        count = source_checkpoint(tmp / "source", args.layers, args.d_model)
        print(f"model: {args.layers} layers x d_model {args.d_model}, {count / 1e6:.0f}M parameters, "
              f"{count * 4 / 2**20:.0f} MB in fp32; TP 2 x PP 2 -> TP 1 x PP {args.pp}")
        rows = {
            "imports only": child([sys.executable, "-c", "import tools.convert, training.consolidated"]),
            "reshard": child([sys.executable, "-m", "tools.convert", "reshard", "--input", str(tmp / "source"),
                              "--output", str(tmp / "lazy"), "--tp", "1", "--pp", str(args.pp)]),
            "whole model": child([sys.executable, "-c", WHOLE_MODEL, str(tmp / "source"), str(tmp / "whole"),
                                  str(args.pp)]),
        }
        if file_digests(tmp / "lazy") != file_digests(tmp / "whole"):
            raise SystemExit("the two conversions wrote different files")
        print(f"{'variant':<12} {'wall s':>7} {'peak RSS MB':>12} {'peak anonymous MB':>18}")
        for name, (wall, rss, anonymous) in rows.items():
            print(f"{name:<12} {wall:7.1f} {rss:12.0f} {anonymous:18.0f}")
        print("outputs: the same files (xxh3)")


if __name__ == "__main__":
    main()
