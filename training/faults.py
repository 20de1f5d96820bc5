"""Surviving faults: stop requests (SIGTERM, Slurm's SIGUSR1), bad steps (NaN/Inf, loss spikes), fault injection.

- `StopRequest`: SIGTERM or SIGUSR1 (`sbatch --signal=USR1@120`) sets a flag; the loop
  finishes its step, all ranks agree, it saves and exits 0. A requeued job then resumes
  from `latest` by itself.
- `BadStepGuard`: hooks DeepSpeed's optimizer step (the one point every engine passes
  through once per global batch, after all micro-batches' backward). All ranks learn the
  global mean loss from one all-reduce; a NaN/Inf loss, or one above
  `train.spike_threshold` x the mean of the last `train.spike_window` good steps, discards
  the gradients instead of stepping. The trainer rolls back or stops after
  `train.bad_step_limit` bad steps in a row.
- `GPT_FAULT_*` environment variables inject faults on purpose (tests, fire drills):
  `GPT_FAULT_NAN_STEPS=3,4` poisons those steps' activations with NaN (once each),
  `GPT_FAULT_SPIKE_STEPS=3` scales step 3's logits by 1000 (a finite loss spike; not for gpt1, no final norm),
  `GPT_FAULT_KILL_IN_SAVE=4` SIGKILLs the process in the middle of step 4's save.
"""
from __future__ import annotations

import functools
import math
import os
import signal
from collections import deque

import torch
import torch.distributed as dist

from training.deepspeed_compat import discard_gradients, guard_optimizer_step, on_backward, pipeline_losses

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Injected bad steps: (variable listing the steps, module whose output is scaled, factor). NaN in the first
# block's output poisons the loss; the final norm's output x 1000 makes the logits 1000x as confident,
# a finite loss in the hundreds (a spike) instead of ~10.
INJECTIONS = (("GPT_FAULT_NAN_STEPS", "Block", float("nan")), ("GPT_FAULT_SPIKE_STEPS", "FinalNorm", 1000.0))


def _steps_from_env(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").split(",") if s.strip()}


def fault_point(where: str, step: int, phase: str) -> None:
    """Die here, as a node failure or OOM-killer would, when the environment asks for it.

    `GPT_FAULT_KILL_IN_SAVE` lists `STEP` (after the shard files) or `STEP:PHASE`, PHASE one of the
    save's `before-shards`, `after-shards`, `after-manifest`, `after-rename` (before `latest` moves)
    and `after-latest` (before retention)."""
    if where != "save":
        return
    for item in os.environ.get("GPT_FAULT_KILL_IN_SAVE", "").split(","):
        at, _, wanted = item.strip().partition(":")
        if at and int(at) == step and (wanted or "after-shards") == phase:
            os.kill(os.getpid(), signal.SIGKILL)


_caught_early: list[int] = []  # stop signals caught between `catch_stop_signals` and the StopRequest


def catch_stop_signals() -> None:
    """Remember SIGTERM/SIGUSR1 from now on instead of dying of them. A trainer's main calls it first: a stop
    asked for while the ranks start (building the model, loading a checkpoint: minutes at scale) then ends the
    run cleanly before its first step, where it used to kill the ranks (Slurm: exit 138) and waste the start."""
    _caught_early.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: _caught_early.append(signum))


class StopRequest:
    """Remembers a stop signal until the end of the current step (one caught since `catch_stop_signals` too)."""

    def __init__(self, device: torch.device) -> None:
        self.signal: int | None = _caught_early[-1] if _caught_early else None
        _caught_early.clear()
        self.device = device  # the flag travels like any hot-path tensor: NCCL has no CPU tensors
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def agreed(self) -> bool:
        """True on every rank if any rank was signalled (Slurm may signal only some of them)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class BadStepGuard:
    """Decides, before each optimizer update, whether the step's loss deserves one."""

    def __init__(self, engine, spike_threshold: float, spike_window: int, device: torch.device):
        self.engine = engine  # training.parallel.ParallelEngine
        self.spike_threshold = spike_threshold
        self.history: deque[float] = deque(maxlen=max(spike_window, 1))
        self.device = device
        self.last_bad = False
        self.consecutive = 0
        self.total = 0
        self._local: list[torch.Tensor] = []
        self._install()

    # ------------------------------------------------------------------ hooks into DeepSpeed
    def _install(self) -> None:
        ds = self.engine.engine
        guard_optimizer_step(ds, self._decide, lambda *_args, **_kwargs: discard_gradients(ds.optimizer))
        if not self.engine.pipelined:  # the plain engine: each micro-batch's loss passes through backward()
            on_backward(ds, lambda loss: self._local.append(loss.detach().float().reshape(1)))
        for variable, target, factor in INJECTIONS:
            steps = _steps_from_env(variable)
            module = next((m for m in self.engine.module.modules() if type(m).__name__ == target), None)
            if steps and module is not None:  # e.g. the final norm lives on the last pipeline stage only
                module.register_forward_hook(functools.partial(self._inject, steps, factor))

    def _inject(self, steps: set[int], factor: float, _module, _inputs, output):
        """Scale one forward's output in each listed step, once (a rollback replays the step numbers)."""
        step = self.engine.engine.global_steps + 1
        if step in steps:
            steps.discard(step)
            return output * factor
        return output

    def _local_loss(self) -> tuple[float, float]:
        """(sum, count) of this rank's micro-batch losses; zero on pipeline stages without the loss."""
        if self.engine.pipelined:
            return pipeline_losses(self.engine.engine)
        values, self._local = self._local, []
        return float(torch.cat(values).sum()) if values else 0.0, float(len(values))

    def _decide(self) -> bool:
        total, count = self._local_loss()
        reduced = torch.tensor([total, count], dtype=torch.float64, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(reduced)
        loss = (reduced[0] / reduced[1]).item() if reduced[1] > 0 else float("nan")
        bad = not math.isfinite(loss) or self._is_spike(loss)
        self.last_bad = bad
        if bad:
            self.consecutive += 1
            self.total += 1
        else:
            self.consecutive = 0
            self.history.append(loss)
        return bad

    def _is_spike(self, loss: float) -> bool:
        if self.spike_threshold <= 0 or len(self.history) < self.history.maxlen:
            return False
        return loss > self.spike_threshold * (sum(self.history) / len(self.history))

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"history": list(self.history), "consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state.get("history", []))
        self.consecutive = state.get("consecutive", 0)
        self.total = state.get("total", 0)
