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


def _use_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _get_state() -> torch.Tensor:
    return torch.cuda.get_rng_state() if _use_cuda() else torch.get_rng_state()


def _set_state(state: torch.Tensor) -> None:
    if _use_cuda():
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


class TensorParallelRNG:
    def __init__(self) -> None:
        self.state: torch.Tensor | None = None

    def seed(self, seed: int) -> None:
        outer = _get_state()
        torch.manual_seed(seed)
        self.state = _get_state()
        _set_state(outer)

    @contextlib.contextmanager
    def fork(self):
        if self.state is None:  # unseeded (e.g. a tool building a model for inference)
            self.seed(0)
        outer = _get_state()
        _set_state(self.state)
        try:
            yield
        finally:
            self.state = _get_state()
            _set_state(outer)

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


def seed_everything(seed: int, pp_rank: int, dp_rank: int, tp_rank: int) -> None:
    """Shared stream across a TP group (differs per stage and data-parallel rank); TP-local stream per rank."""
    shared = derive_seed(seed, "pp", pp_rank, "dp", dp_rank)
    random.seed(shared)
    np.random.seed(shared)
    torch.manual_seed(shared)
    _TP_RNG.seed(derive_seed(shared, "tp", tp_rank))
