"""Measure what the DeepSpeed engine really allocates for a config, to check `training.memory`.

Builds the trainer's model and engine (training.parallel.ParallelEngine) under any launcher and
counts tensor storages on each rank: the parameters, the ZeRO optimizer's fp32 master partition
and Adam moments after one training step, and everything else alive after one more backward
pass (gradients and reduction buckets; not separable inside DeepSpeed's fused pipeline step,
so reported for PP=1 only). Rank 0 prints a JSON list, per rank, of measured and
predicted bytes for that rank's pipeline stage.

    python -m tools.plan_measure --config configs/tiny/gpt3_tiny.yaml --set model.vocab_size=50257
    torchrun --nproc-per-node 4 -m tools.plan_measure --config configs/tiny/gpt3_tiny.yaml \
        --set model.vocab_size=50257 parallel.tp=2 parallel.pp=2
"""
from __future__ import annotations

import argparse
import gc
import json
import warnings

import torch

from training.config import load_config
from training.memory import estimate_stages, layout_of

def live_storages() -> dict[tuple[int, int], int]:
    """(data_ptr, bytes) -> bytes of every tensor storage reachable from Python objects.

    Keyed by size too: a freed storage's address is often reused by a later, different one."""
    found = {}
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns of deprecations
        warnings.simplefilter("ignore", FutureWarning)
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        if obj.is_meta:  # shape-only records (DeepSpeed keeps some); they own no memory
            continue
        tensors = [obj]
        if isinstance(obj, torch.nn.Parameter) and obj.grad is not None:
            tensors.append(obj.grad)
        for tensor in tensors:
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if storage.nbytes() and storage.data_ptr():
                found[storage.data_ptr(), storage.nbytes()] = storage.nbytes()
    return found


def _trainer(config):
    """The trainer's own model and engine (training.parallel.ParallelEngine), any launcher."""
    from training.distributed import init_distributed
    from training.model import language_model_loss
    from training.parallel import ParallelEngine

    layout = init_distributed(config.parallel.tp, config.parallel.pp)
    engine = ParallelEngine(config, layout, config.train.global_batch_size)
    shape = (config.train.micro_batch_size, config.model.seq_length)
    generator = torch.Generator().manual_seed(layout.dp_rank)
    micro_batches = [(torch.randint(0, config.model.vocab_size, shape, generator=generator),) * 2
                     for _ in range(config.train.global_batch_size // (shape[0] * layout.dp))]

    def backward():  # one micro-batch's gradients (the plain engine; the pipeline engine fuses it)
        tokens, labels = micro_batches[0]
        engine.engine.backward(language_model_loss(engine.engine(tokens), labels))

    return engine, lambda: engine.train_step(micro_batches), None if engine.pipelined else backward, layout.pp_rank


def _key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _optimizer_storages(optimizer) -> dict[int, int]:
    """DeepSpeed ZeRO-1/2's fp32 master partitions and the wrapped optimizer's state (Adam moments)."""
    tensors = list(optimizer.single_partition_of_fp32_groups)
    tensors += [t for state in optimizer.optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor)]
    return {_key(t): t.untyped_storage().nbytes() for t in tensors if t.dim()}


def measure(config) -> dict:
    """This rank's measured bytes and the memory model's prediction for its pipeline stage."""
    before = live_storages()
    engine, train_step, backward, stage = _trainer(config)
    train_step()  # Adam states exist from here on
    param_storages = {_key(p): p.untyped_storage().nbytes() for p in engine.module.parameters()}
    optimizer_storages = _optimizer_storages(engine.engine.optimizer)
    measured = {"parameters": sum(param_storages.values()), "optimizer": sum(optimizer_storages.values())}
    if backward is not None:
        backward()
        gc.collect()
        known = before.keys() | param_storages.keys() | optimizer_storages.keys()
        # Everything else the engine holds after a backward: gradients and reduction buckets.
        measured["gradients"] = sum(n for key, n in live_storages().items() if key not in known)
    world = torch.distributed.get_world_size()
    predicted = estimate_stages(config, layout_of(config, world))[stage]
    return {"rank": torch.distributed.get_rank(), "stage": stage, "measured": measured,
            "predicted": {part: getattr(predicted, part) for part in measured}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan_measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    if config.parallel.zero_stage not in (1, 2):
        parser.error("only ZeRO stages 1 and 2 keep whole parameters that can be counted here")
    try:
        result = measure(config)
        results = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(results, result)
        if torch.distributed.get_rank() == 0:
            print(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
