"""Run under `torchrun --nproc-per-node 2`: dropout under TP2 on CPU, checked across the two ranks.

Prints one JSON line (rank 0) with what the test asserts:
- `local_draws_differ`: inside `tensor_parallel_rng().fork()` the ranks draw different numbers
  (each rank's attention heads get their own masks); `shared_draws_equal`: outside it they
  draw the same (masks on activations every TP rank holds in full).
- `replicated_grads_equal`: after a forward/backward with dropout 0.1, the gradients of every
  TP-replicated parameter (LayerNorms, row-parallel biases, positions) are bitwise equal on both
  ranks; one different mask on a replicated activation would make them differ.
- `dropout_changed_grads`: the same step with dropout 0 gives other gradients (dropout is on).
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from training.config import load_config
from training.distributed import init_distributed, shutdown
from training.model import GPT, language_model_loss
from training.rng import seed_everything, tensor_parallel_rng
from tests.training.launch import TINY


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    group = parallel_state.get_tensor_model_parallel_group()
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor.contiguous(), group=group)
    return out


def replicated_gradients(dropout: float, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg = load_config(TINY, ["model.vocab_size=50257", f"model.dropout={dropout}"])
    seed_everything(1234, 0, 0, parallel_state.get_tensor_model_parallel_rank())
    model = GPT(cfg.model, cfg.train.seed).train()
    language_model_loss(model(tokens), tokens.roll(-1, dims=1)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()
            if not getattr(p, "tensor_model_parallel", False)}


def main() -> None:
    init_distributed(tp=2, pp=1)
    seed_everything(1234, 0, 0, parallel_state.get_tensor_model_parallel_rank())
    with tensor_parallel_rng().fork():
        local = gathered(torch.rand(8))
    shared = gathered(torch.rand(8))
    tokens = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with_dropout = replicated_gradients(0.1, tokens)
    without = replicated_gradients(0.0, tokens)
    result = {
        "local_draws_differ": not torch.equal(local[0], local[1]),
        "shared_draws_equal": torch.equal(shared[0], shared[1]),
        "replicated_parameters": len(with_dropout),
        "replicated_grads_equal": all(torch.equal(*gathered(g)) for g in with_dropout.values()),
        "dropout_changed_grads": any(not torch.equal(with_dropout[n], without[n]) for n in with_dropout),
    }
    if dist.get_rank() == 0:
        print(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    main()
