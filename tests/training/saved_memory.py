"""What autograd keeps for one transformer block's backward, next to what the memory model predicts."""
from __future__ import annotations

import torch
from torch import nn

from training.config import Config
from training.memory import Layout, block_activations

MICRO_BATCH = 2


def saved_for_backward(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for `module(x)`'s backward, its parameters aside."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x)
    return sum(storages.values())


def block_probe(config: Config, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes autograd keeps for the first block of `config` at micro-batch 2 on `device`, the
    `block_activations` prediction for that block at TP 1)."""
    from training.consolidated import ensure_single_process_groups
    from training.distributed import shutdown
    from training.model import Block

    m = config.model
    ensure_single_process_groups()
    try:
        block = Block(m, 0, 0).to(device=device, dtype=dtype)
        x = torch.randn(MICRO_BATCH, m.seq_length, m.d_model, device=device, dtype=dtype, requires_grad=True)
        measured = saved_for_backward(block, x)
    finally:
        shutdown()
    return measured, block_activations(config, Layout(1, 1, 1, MICRO_BATCH, 0, False))
