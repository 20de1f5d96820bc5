"""Pretrain a GPT with tensor x pipeline x ZeRO data parallelism.

    python -m training.torchrun --nproc-per-node 8 -m training.pretrain --config configs/tiny/gpt3_tiny.yaml \\
        --run-dir runs/tiny --set parallel.tp=2 parallel.pp=2

`training.torchrun` is torchrun with a pre-flight check and a clean stop (training/torchrun.py).
Also started by `torchrun`, `srun` (ranks from Slurm's environment) or the `deepspeed` launcher.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from common.errors import UserError
from training import checkpoint, loop
from training.config import Config, ConfigError, check_layout, load_config
from training.deepspeed_compat import check_version
from training.faults import catch_stop_signals
from training.data import Blend, build_datasets, micro_batches, read_blend
from training.memory import check_fits, check_stages
from training.distributed import Layout, shutdown, world_from_environment
from training.parallel import MicroBatch, ParallelEngine
from training.progress import Progress
from training.schedule import batch_size, learning_rate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("--run-dir", required=True, help="directory for metrics, config, checkpoints, TensorBoard")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. parallel.tp=2 train.steps=100 precision=bf16")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, world: int, gpu_memory: bool = True) -> tuple[Config, Blend]:
    """Everything checkable before any process group exists: config, layout, data files.

    Run by every rank, and once before any rank starts by `training.torchrun`, which passes
    `gpu_memory=False`: a launcher must not take a GPU, so it sizes memory only from
    `parallel.device_memory_gb`."""
    check_version()  # of DeepSpeed, whose internals the trainer hooks
    cfg = load_config(args.config, args.set)
    check_layout(cfg, world)
    if not cfg.data.blend:
        raise ConfigError("data.blend is not set: name a blend JSON (e.g. tests/data/tokens/blend.json)")
    blend = read_blend(cfg.data.blend)
    vocab = blend.tokenizer["vocab_size"]
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the blend's tokenizer "
                          f"({vocab} tokens)")
    check_stages(cfg)  # after the vocabulary is known: the embedding's size decides the cut
    memory_gb = cfg.parallel.device_memory_gb or (
        torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu_memory and torch.cuda.is_available() else 0)
    if memory_gb:
        check_fits(cfg, world, memory_gb)
    return cfg, blend


def samples_for(cfg: Config) -> int:
    tokens, samples = 0, 0
    for _ in range(cfg.train.steps):
        batch = batch_size(tokens, cfg.train)
        samples += batch
        tokens += batch * cfg.model.seq_length
    return samples


def write_run_record(run_dir: Path, cfg: Config, layout: Layout) -> None:
    """What is needed to reproduce the run: resolved config, software versions, layout."""
    import deepspeed
    import megatron.core

    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "environment.json").write_text(json.dumps({
        "python": platform.python_version(), "torch": torch.__version__,
        "deepspeed": deepspeed.__version__, "megatron_core": megatron.core.__version__,
        "layout": {"world": layout.world, "tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
                   "device": layout.device.type, "backend": torch.distributed.get_backend()},
        "device_name": torch.cuda.get_device_name(layout.device) if layout.device.type == "cuda" else platform.machine(),
        "precision": cfg.precision, "tf32": loop.uses_tf32(cfg, layout),
        "command": sys.argv,
    }, indent=2))


class Pretraining:
    """The loop's recipe for pretraining: samples of the blend's datasets, GPT-3's token-based schedules."""

    name = "pretrain"

    def __init__(self, cfg: Config, blend: Blend, layout: Layout, run_dir: Path):
        self.cfg, self.blend, self.layout = cfg, blend, layout
        self.seq_length = cfg.model.seq_length
        self.cache_dir = cfg.data.cache_dir or str(run_dir / "data_cache")
        self.eval_samples = cfg.logging.eval_iters * cfg.train.global_batch_size
        self.train_data = self.valid_data = None

    def start(self, progress: Progress) -> None:
        """Datasets long enough for the run, plus the samples skipped by rollbacks."""
        self.train_data, self.valid_data = build_datasets(
            self.cfg, self.blend, samples_for(self.cfg) + progress.skipped_samples, self.eval_samples, self.cache_dir)

    def batch_size(self, progress: Progress) -> int:
        return batch_size(progress.tokens, self.cfg.train)

    def learning_rate(self, progress: Progress, batch: int) -> float:
        return learning_rate(progress.tokens + batch * self.seq_length, self.cfg.train)  # warmup's step 1 is not lr 0

    def micro_batches(self, progress: Progress, batch: int) -> list[MicroBatch]:
        return micro_batches(self.train_data, progress.consumed, batch, self.layout.dp, self.layout.dp_rank,
                             self.cfg.train.micro_batch_size)

    def step_metrics(self) -> dict:
        return {}

    def evaluate(self, engine: ParallelEngine) -> dict:
        """Loss on the same first validation samples every time (independent of the layout)."""
        loss = engine.eval_loss(micro_batches(self.valid_data, 0, self.eval_samples, self.layout.dp,
                                              self.layout.dp_rank, self.cfg.train.micro_batch_size))
        return {"valid_loss": loss, "valid_ppl": float(torch.tensor(loss).exp())}


def train(cfg: Config, blend: Blend, run_dir: Path) -> None:
    layout = loop.start_processes(cfg)
    resume_from = checkpoint.find_resume_point(cfg, run_dir)
    if resume_from:
        checkpoint.fit_config(cfg, resume_from)
    if layout.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(run_dir, cfg, layout)
        print(f"[pretrain] {layout.describe()}, {cfg.model.num_parameters(layout.tp) / 1e6:.2f}M parameters, "
              f"{cfg.train.steps} steps", flush=True)
    engine = loop.build_engine(cfg, layout, batch_size(0, cfg.train), resume_from)
    loop.train(engine, Pretraining(cfg, blend, layout, run_dir), cfg, layout, run_dir, resume_from)


def collective_failure(err: RuntimeError) -> str | None:
    """The first line of `err` when a collective timed out or lost its peer, else None.

    gloo raises plain RuntimeErrors ("[.../gloo/...cc:78] Timed out waiting 6000ms for recv
    operation to complete"); NCCL with TORCH_NCCL_BLOCKING_WAIT=1 raises DistBackendError."""
    text = str(err).strip()
    if not (isinstance(err, dist.DistError) or "gloo" in text):
        return None
    return re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(err).__name__)


def main(argv=None) -> int:
    catch_stop_signals()  # before the start-up's minutes: a stop asked for during them ends the run cleanly
    args = parse_args(argv)
    rank, world, local_rank = world_from_environment()
    try:
        cfg, blend = prepare(args, world)
    except UserError as err:  # a config key, a layout, a blend: the same on every rank
        if local_rank == 0:  # every rank of a node finds the same mistake: say it once
            print(f"training.pretrain: error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg, blend, Path(args.run_dir))
    except UserError as err:  # a checkpoint that cannot be used, a run that cannot go on
        print(f"training.pretrain: error: {err}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as err:
        reason = collective_failure(err)
        if reason is None:
            raise
        print(f"training.pretrain: error: rank {rank}: a collective failed: {reason} (ranks wait "
              f"parallel.timeout_minutes={cfg.parallel.timeout_minutes:g} for each other)", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
