"""Every DeepSpeed internal the trainer reaches into, in one place, for the versions it was tested with.

DeepSpeed's public API has no hook between the last micro-batch's backward and the optimizer
update, no way to skip one update, and no way to re-link Adam's state after loading it by
hand; the functions below do those things through its engines' private attributes. A
DeepSpeed outside `TESTED` is refused in one line before any rank starts, instead of failing
somewhere inside a step.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

import torch

from common.errors import UserError

TESTED = ("0.19",)  # major.minor series the hooks below were checked against


def check_version() -> None:
    installed = version("deepspeed")
    if ".".join(installed.split(".")[:2]) not in TESTED:
        raise UserError(f"DeepSpeed {installed} is untested: the trainer hooks its internals "
                        f"(training/deepspeed_compat.py), checked with {', '.join(TESTED)}.x; "
                        f"pip install 'deepspeed>=0.19,<0.20'")


def guard_optimizer_step(ds_engine, is_bad: Callable[[], bool], discard: Callable[..., None]) -> None:
    """Ask `is_bad()` once per global batch, after all micro-batches' backward and before the update;
    when it says so, `discard` runs in place of the optimizer's step (any engine, pipeline or not)."""
    take_step, optimizer_step = ds_engine._take_model_step, ds_engine.optimizer.step

    def guarded_take_step(*args, **kwargs):
        ds_engine.optimizer.step = discard if is_bad() else optimizer_step
        try:
            return take_step(*args, **kwargs)
        finally:
            ds_engine.optimizer.step = optimizer_step

    ds_engine._take_model_step = guarded_take_step


def on_backward(ds_engine, record: Callable[[torch.Tensor], None]) -> None:
    """Call `record(loss)` for each micro-batch loss the plain engine's backward() receives."""
    backward = ds_engine.backward

    def recording_backward(loss, *args, **kwargs):
        record(loss)
        return backward(loss, *args, **kwargs)

    ds_engine.backward = recording_backward


def pipeline_losses(ds_engine) -> tuple[float, float]:
    """(sum, count) of the micro-batch losses the pipeline engine's last stage holds for this batch."""
    if not ds_engine.is_last_stage() or ds_engine.total_loss is None:
        return 0.0, 0.0
    return float(ds_engine.total_loss.sum()), float(ds_engine.micro_batches)


def discard_gradients(optimizer) -> None:
    """Drop this step's gradients as ZeRO does on an fp16 overflow, so DeepSpeed counts a skipped step."""
    optimizer.zero_grad(set_to_none=True)
    for name in ("averaged_gradients", "all_grad_tensors"):
        buffers = getattr(optimizer, name, None)
        if isinstance(buffers, dict):
            for key in buffers:
                buffers[key] = None
    if hasattr(optimizer, "_release_preflattened_grad_buffers"):
        optimizer._release_preflattened_grad_buffers()
    if hasattr(optimizer, "overflow"):
        optimizer.overflow = True  # DeepSpeed then counts it in engine.skipped_steps and skips its scheduler


def relink_optimizer_state(optimizer) -> None:
    """Make ZeRO's per-parameter views of Adam's state point at state set or created by hand.

    DeepSpeed links them lazily after the first parameter group's step, so groups with no state
    yet keep empty views."""
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce (~1 min of g++ per fresh environment).

    On CPU its comm backend builds the op when it starts, but only its inference all-reduce
    uses it; training collectives go through torch.distributed (gloo) either way."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
