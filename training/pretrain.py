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
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from common.errors import UserError
from training import checkpoint
from training.config import Config, ConfigError, check_layout, load_config
from training.deepspeed_compat import check_version
from training.data import Blend, build_datasets, micro_batches, read_blend
from training.memory import check_fits, check_stages
from training.distributed import Layout, init_distributed, shutdown, world_from_environment
from training.faults import BadStepGuard, StopRequest
from training.metrics import MetricsLog, device_peak_tflops, training_flops_per_token
from training.parallel import ParallelEngine
from training.progress import Progress, roll_back
from training.rng import seed_everything
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
        "precision": cfg.precision, "tf32": uses_tf32(cfg, layout),
        "command": sys.argv,
    }, indent=2))


def uses_tf32(cfg: Config, layout: Layout) -> bool:
    return cfg.tf32 and layout.device.type == "cuda"


def evaluate(engine: ParallelEngine, valid, cfg: Config, layout: Layout) -> float:
    """Loss on the same first validation samples every time (independent of the layout)."""
    samples = cfg.logging.eval_iters * cfg.train.global_batch_size
    return engine.eval_loss(micro_batches(valid, 0, samples, layout.dp, layout.dp_rank, cfg.train.micro_batch_size))


def train(cfg: Config, blend: Blend, run_dir: Path) -> None:
    layout = init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.timeout_minutes)
    if layout.device.type == "cuda":  # fp32 matmuls (and fp32 parts of mixed precision) on TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    seed_everything(cfg.train.seed, layout.pp_rank, layout.dp_rank, layout.tp_rank, layout.device)
    resume_from = checkpoint.find_resume_point(cfg, run_dir)
    if resume_from:
        checkpoint.fit_config(cfg, resume_from)
    is_logger = layout.rank == 0
    if is_logger:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(run_dir, cfg, layout)
        print(f"[pretrain] {layout.describe()}, {cfg.model.num_parameters(layout.tp) / 1e6:.2f}M parameters, "
              f"{cfg.train.steps} steps", flush=True)
    seq = cfg.model.seq_length
    engine = ParallelEngine(cfg, layout, batch_size(0, cfg.train))
    guard = BadStepGuard(engine, cfg.train.spike_threshold, cfg.train.spike_window, layout.device)
    stop = StopRequest(layout.device)
    progress = Progress()
    if resume_from:
        progress.restore(checkpoint.load(engine, cfg, layout, resume_from), guard)
        if is_logger:
            print(f"[pretrain] resumed from {resume_from['path']} at step {progress.step}", flush=True)
    eval_samples = cfg.logging.eval_iters * cfg.train.global_batch_size
    cache_dir = cfg.data.cache_dir or str(run_dir / "data_cache")
    train_data, valid_data = build_datasets(cfg, blend, samples_for(cfg) + progress.skipped_samples, eval_samples,
                                            cache_dir)
    log = MetricsLog(run_dir, enabled=is_logger, tensorboard=cfg.logging.tensorboard)
    peak = device_peak_tflops(layout.device, cfg.precision, cfg.logging.peak_tflops, tf32=uses_tf32(cfg, layout))
    flops_per_token = training_flops_per_token(cfg.model)
    ckpt_dir = checkpoint.checkpoint_dir(cfg, run_dir)
    if resume_from:  # last: the lines above draw random numbers (e.g. the CPU peak measurement)
        checkpoint.restore_rng(resume_from, cfg, layout)

    while progress.step < cfg.train.steps:
        step = progress.step + 1
        batch = batch_size(progress.tokens, cfg.train)
        lr = learning_rate(progress.tokens + batch * seq, cfg.train)  # warmup's first step is not wasted at lr 0
        engine.set_batch_size(batch)
        engine.set_lr(lr)
        data = micro_batches(train_data, progress.consumed, batch, layout.dp, layout.dp_rank,
                             cfg.train.micro_batch_size)
        start = time.perf_counter()
        loss = engine.train_step(data)
        elapsed = time.perf_counter() - start
        progress.advance(batch, seq)
        if step % cfg.logging.interval == 0 or step == cfg.train.steps or guard.last_bad:
            tflops = flops_per_token * batch * seq / elapsed / layout.world / 1e12
            log.write({
                "step": step, "loss": loss, "lr": lr, "tokens": progress.tokens, "batch_size": batch,
                "tokens_per_s": batch * seq / elapsed, "step_time_s": elapsed,
                "tflops": tflops, "mfu": tflops / peak if peak else None, "grad_norm": engine.grad_norm,
                "loss_scale": engine.loss_scale, "skipped_steps": engine.skipped_steps,
                "bad_step": guard.last_bad, "bad_steps": guard.total,
            })
            if is_logger:
                print(f"[pretrain] step {step:>6} loss {loss:.4f} lr {lr:.3e} "
                      f"{batch * seq / elapsed:,.0f} tok/s" + (" (update skipped: bad step)" if guard.last_bad else ""),
                      flush=True)
        if guard.consecutive >= cfg.train.bad_step_limit:
            skipped_before = progress.skipped_samples
            rolled_back_to = roll_back(engine, cfg, layout, ckpt_dir, progress, guard)
            train_data, _ = build_datasets(cfg, blend, samples_for(cfg) + progress.skipped_samples, eval_samples,
                                           cache_dir)
            checkpoint.restore_rng(rolled_back_to, cfg, layout)
            if is_logger:
                print(f"[pretrain] rolled back to step {progress.step}, skipping "
                      f"{progress.skipped_samples - skipped_before} samples", flush=True)
            continue
        if (cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0) or step == cfg.train.steps:
            valid_loss = evaluate(engine, valid_data, cfg, layout)
            log.write({"step": step, "valid_loss": valid_loss,
                       "valid_ppl": float(torch.tensor(valid_loss).exp()), "tokens": progress.tokens}, prefix="valid")
        stopping = stop.agreed() or (cfg.train.exit_interval and step % cfg.train.exit_interval == 0)
        if stopping or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or step == cfg.train.steps:
            path = checkpoint.save(engine, cfg, layout, ckpt_dir, progress.state(guard))
            if is_logger:
                print(f"[pretrain] saved {path}", flush=True)
        if stopping and step < cfg.train.steps:
            if is_logger:
                print(f"[pretrain] stopping after step {step} as asked"
                      f"{f' (signal {stop.signal})' if stop.signal else ''}; rerun to resume", flush=True)
            break
    log.close()


def collective_failure(err: RuntimeError) -> str | None:
    """The first line of `err` when a collective timed out or lost its peer, else None.

    gloo raises plain RuntimeErrors ("[.../gloo/...cc:78] Timed out waiting 6000ms for recv
    operation to complete"); NCCL with TORCH_NCCL_BLOCKING_WAIT=1 raises DistBackendError."""
    text = str(err).strip()
    if not (isinstance(err, dist.DistError) or "gloo" in text):
        return None
    return re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(err).__name__)


def main(argv=None) -> int:
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
