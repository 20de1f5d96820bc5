"""Random streams for dropout under tensor parallelism, on CPU as on GPU.

Dropout on activations that every TP rank holds in full (after a RowParallelLinear)
must draw the same mask on all TP ranks; dropout on a rank's own shard (its attention
heads) must draw a different one per rank. The default generator serves the first
case (seeded identically across the TP group); `TensorParallelRNG.fork()` swaps in a
per-TP-rank stream for the second. megatron-core's tracker does this with CUDA
generator states only; this one uses the generator of the device in use.
"""
from __future__ import annotations

import contextlib
import random
import zlib

import numpy as np
import torch


class TensorParallelRNG:
    """The TP-local stream of one device type: dropout draws from the generator of the device it runs on.

    The device is fixed when seeding (the trainer's device), never inferred from whether CUDA
    happens to be initialised yet: a state saved for one generator cannot be set on another."""

    def __init__(self) -> None:
        self.state: torch.Tensor | None = None
        self.device_type = "cuda" if torch.cuda.is_available() else "cpu"

    def _get_state(self) -> torch.Tensor:
        return torch.cuda.get_rng_state() if self.device_type == "cuda" else torch.get_rng_state()

    def _set_state(self, state: torch.Tensor) -> None:
        if self.device_type == "cuda":
            torch.cuda.set_rng_state(state)
        else:
            torch.set_rng_state(state)

    def seed(self, seed: int, device_type: str | None = None) -> None:
        self.device_type = device_type or self.device_type
        outer = self._get_state()
        torch.manual_seed(seed)
        self.state = self._get_state()
        self._set_state(outer)

    @contextlib.contextmanager
    def fork(self):
        if self.state is None:  # unseeded (e.g. a tool building a model for inference)
            self.seed(0)
        outer = self._get_state()
        self._set_state(self.state)
        try:
            yield
        finally:
            self.state = self._get_state()
            self._set_state(outer)

    def checkpoint_context(self):
        """`context_fn` for torch.utils.checkpoint: recomputation replays the same TP-local masks."""
        saved: dict[str, torch.Tensor] = {}

        @contextlib.contextmanager
        def forward():
            if self.state is None:
                self.seed(0)
            saved["state"] = self.state.clone()
            yield

        @contextlib.contextmanager
        def recompute():
            current = self.state
            self.state = saved["state"]
            try:
                yield
            finally:
                self.state = current

        return forward(), recompute()


_TP_RNG = TensorParallelRNG()


def tensor_parallel_rng() -> TensorParallelRNG:
    return _TP_RNG


def derive_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def seed_everything(seed: int, pp_rank: int, dp_rank: int, tp_rank: int, device: torch.device | None = None) -> None:
    """Shared stream across a TP group (differs per stage and data-parallel rank); TP-local stream per rank.

    `device` is where dropout runs (default: the GPU when there is one)."""
    shared = derive_seed(seed, "pp", pp_rank, "dp", dp_rank)
    random.seed(shared)
    np.random.seed(shared)
    torch.manual_seed(shared)
    _TP_RNG.seed(derive_seed(shared, "tp", tp_rank), device.type if device is not None else None)
