"""Where a run is: step, tokens (for the LR and batch schedules), data position, skipped data; rollback."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from training import checkpoint
from training.checkpoint_files import latest_tag, read_manifest
from training.config import Config
from training.distributed import Layout
from training.faults import BadStepGuard


class TrainingHalted(UserError):
    """The run cannot go on by itself (bad steps with nothing to roll back to, or policy `stop`)."""


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    consumed: int = 0  # samples drawn from the data iterator, skipped windows included
    skipped_windows: list[list[int]] = field(default_factory=list)  # [first, end) samples jumped over on rollback

    @property
    def skipped_samples(self) -> int:
        return sum(end - first for first, end in self.skipped_windows)

    def advance(self, batch: int, seq_length: int) -> None:
        self.step += 1
        self.tokens += batch * seq_length
        self.consumed += batch

    def state(self, guard: BadStepGuard) -> dict:
        return {"step": self.step, "tokens": self.tokens, "consumed_samples": self.consumed,
                "skipped_windows": self.skipped_windows, "guard": guard.state_dict()}

    def restore(self, trainer: dict, guard: BadStepGuard) -> None:
        """From a checkpoint's trainer state ({} for weights-only checkpoints: start at step 0)."""
        self.step = trainer.get("step", 0)
        self.tokens = trainer.get("tokens", 0)
        self.consumed = trainer.get("consumed_samples", 0)
        self.skipped_windows = [list(w) for w in trainer.get("skipped_windows", [])]
        guard.load_state_dict(trainer.get("guard", {}))


def roll_back(engine, cfg: Config, layout: Layout, ckpt_dir: Path, progress: Progress, guard: BadStepGuard) -> dict:
    """After `train.bad_step_limit` bad steps in a row: reload the last checkpoint but keep the data position,
    so the batches since that checkpoint are skipped (PaLM, OPT), or stop if so configured.

    Returns the checkpoint's manifest (for `checkpoint.restore_rng` once the data is rebuilt)."""
    limit = cfg.train.bad_step_limit
    reason = f"{limit} bad steps in a row (NaN/Inf or spiking loss) up to step {progress.step}"
    if cfg.train.bad_step_policy == "stop":
        last = latest_tag(ckpt_dir)
        raise TrainingHalted(f"{reason}; stopping (train.bad_step_policy=stop); last checkpoint: "
                             f"{ckpt_dir / last if last else 'none'}")
    if not latest_tag(ckpt_dir):
        raise TrainingHalted(f"{reason} and no checkpoint in {ckpt_dir} to roll back to")
    consumed, bad_steps = progress.consumed, guard.total
    manifest = read_manifest(ckpt_dir)
    progress.restore(checkpoint.load(engine, cfg, layout, manifest), guard)
    guard.total = bad_steps  # they happened, although the timeline they were on is abandoned
    if consumed > progress.consumed:
        progress.skipped_windows.append([progress.consumed, consumed])
        progress.consumed = consumed
    return manifest
