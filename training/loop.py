"""The one training loop, for pretraining (`training.pretrain`) and fine-tuning (`gpt-finetune`) alike.

A `Recipe` brings what differs: the data, the batch-size and learning-rate schedules, extra
per-step metrics and the evaluation. The loop brings the rest, the same for both: the
`ParallelEngine` step, the bad-step guard and rollback, stop signals, metrics.jsonl and
TensorBoard, checkpoints and resuming from them.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Protocol

import torch

from training import checkpoint
from training.config import Config
from training.distributed import Layout, init_distributed
from training.faults import BadStepGuard, StopRequest
from training.metrics import MetricsLog, device_peak_tflops, training_flops_per_token
from training.model import language_model_loss, without_initialisation
from training.parallel import Loss, MicroBatch, ParallelEngine
from training.progress import Progress, roll_back
from training.rng import seed_everything


class Recipe(Protocol):
    """What a kind of training brings to the loop."""

    name: str  # prefix of the loop's console lines, e.g. "pretrain"
    seq_length: int  # tokens per sample, for the token count and throughput

    def start(self, progress: Progress) -> None:
        """Prepare the data from `progress` on (after a resume or a rollback)."""

    def batch_size(self, progress: Progress) -> int: ...

    def learning_rate(self, progress: Progress, batch: int) -> float: ...

    def micro_batches(self, progress: Progress, batch: int) -> list[MicroBatch]:
        """This data-parallel rank's share of the step's global batch."""

    def step_metrics(self) -> dict:
        """Extra values for this step's metrics record (collective: every rank calls it after each step)."""

    def evaluate(self, engine: ParallelEngine) -> dict:
        """A validation record (collective)."""


def uses_tf32(cfg: Config, layout: Layout) -> bool:
    return cfg.tf32 and layout.device.type == "cuda"


def build_engine(cfg: Config, layout: Layout, batch_size: int, resume_from: dict | None,
                 loss: Loss = language_model_loss) -> ParallelEngine:
    """The engine; resuming from a checkpoint, its model's weights are not drawn first, as the checkpoint
    overwrites every one (at 175B a rank would spend minutes drawing its stage's full weights at every start)."""
    with without_initialisation() if resume_from else contextlib.nullcontext():
        return ParallelEngine(cfg, layout, batch_size, loss)


def start_processes(cfg: Config) -> Layout:
    """This process's groups (the layout), its device's matmul precision and its random streams."""
    layout = init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.timeout_minutes)
    if layout.device.type == "cuda":  # fp32 matmuls (and fp32 parts of mixed precision) on TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    seed_everything(cfg.train.seed, layout.pp_rank, layout.dp_rank, layout.tp_rank, layout.device)
    return layout


def train(engine: ParallelEngine, recipe: Recipe, cfg: Config, layout: Layout, run_dir: Path,
          resume_from: dict | None, manifest_extra: dict | None = None, fresh_prefix: str | None = None) -> Progress:
    """Train for `cfg.train.steps` steps from `resume_from` (a checkpoint manifest, or None); returns where it ended.

    `manifest_extra` joins every checkpoint's manifest; parameters named `fresh_prefix...` are not
    taken from a weights-only `resume_from` (`checkpoint.load`)."""
    is_logger = layout.rank == 0
    guard = BadStepGuard(engine, cfg.train.spike_threshold, cfg.train.spike_window, layout.device)
    stop = StopRequest(layout.device)
    progress = Progress()
    if resume_from:
        progress.restore(checkpoint.load(engine, cfg, layout, resume_from, fresh_prefix), guard)
        if is_logger:
            print(f"[{recipe.name}] resumed from {resume_from['path']} at step {progress.step}" if resume_from["trainer"]
                  else f"[{recipe.name}] starting from the weights of {resume_from['path']}", flush=True)
    recipe.start(progress)
    log = MetricsLog.for_run(cfg, run_dir, enabled=is_logger)
    peak = device_peak_tflops(layout.device, cfg.precision, cfg.logging.peak_tflops, tf32=uses_tf32(cfg, layout))
    flops_per_token = training_flops_per_token(cfg.model)
    ckpt_dir = checkpoint.checkpoint_dir(cfg, run_dir)
    if resume_from:  # last: the lines above draw random numbers (e.g. the CPU peak measurement)
        checkpoint.restore_rng(resume_from, cfg, layout)

    if progress.step < cfg.train.steps and stop.agreed():  # asked while starting: the state is where it started
        if is_logger:
            print(f"[{recipe.name}] stop asked for during start-up{f' (signal {stop.signal})' if stop.signal else ''}: "
                  f"exiting before step {progress.step + 1}; rerun to resume", flush=True)
        log.close()
        return progress
    seq = recipe.seq_length
    while progress.step < cfg.train.steps:
        step = progress.step + 1
        batch = recipe.batch_size(progress)
        lr = recipe.learning_rate(progress, batch)
        engine.set_batch_size(batch)
        engine.set_lr(lr)
        data = recipe.micro_batches(progress, batch)
        start = time.perf_counter()
        loss = engine.train_step(data)
        elapsed = time.perf_counter() - start
        extra = recipe.step_metrics()
        progress.advance(batch, seq)
        if step % cfg.logging.interval == 0 or step == cfg.train.steps or guard.last_bad:
            tflops = flops_per_token * batch * seq / elapsed / layout.world / 1e12
            log.write({
                "step": step, "loss": loss, **extra, "lr": lr, "tokens": progress.tokens, "batch_size": batch,
                "tokens_per_s": batch * seq / elapsed, "step_time_s": elapsed,
                "tflops": tflops, "mfu": tflops / peak if peak else None, "grad_norm": engine.grad_norm,
                "loss_scale": engine.loss_scale, "skipped_steps": engine.skipped_steps,
                "bad_step": guard.last_bad, "bad_steps": guard.total,
            })
            if is_logger:
                print(f"[{recipe.name}] step {step:>6} loss {loss:.4f} lr {lr:.3e} "
                      f"{batch * seq / elapsed:,.0f} tok/s" + (" (update skipped: bad step)" if guard.last_bad else ""),
                      flush=True)
        if guard.consecutive >= cfg.train.bad_step_limit:
            skipped_before = progress.skipped_samples
            rolled_back_to = roll_back(engine, cfg, layout, ckpt_dir, progress, guard)
            recipe.start(progress)
            checkpoint.restore_rng(rolled_back_to, cfg, layout)
            if is_logger:
                print(f"[{recipe.name}] rolled back to step {progress.step}, skipping "
                      f"{progress.skipped_samples - skipped_before} samples", flush=True)
            continue
        if (cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0) or step == cfg.train.steps:
            log.write({"step": step, **recipe.evaluate(engine), "tokens": progress.tokens}, prefix="valid")
        stopping = stop.agreed() or (cfg.train.exit_interval and step % cfg.train.exit_interval == 0)
        if stopping or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or step == cfg.train.steps:
            path = checkpoint.save(engine, cfg, layout, ckpt_dir, progress.state(guard), manifest_extra)
            if is_logger:
                print(f"[{recipe.name}] saved {path}", flush=True)
        if stopping and step < cfg.train.steps:
            if is_logger:
                print(f"[{recipe.name}] stopping after step {step} as asked"
                      f"{f' (signal {stop.signal})' if stop.signal else ''}; rerun to resume", flush=True)
            break
    log.close()
    return progress
