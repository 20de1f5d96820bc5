"""Measure what the DeepSpeed engine really allocates for a config, to check `training.memory`.

Runs one process (a 1-rank gloo group), builds a GPT of the config's shape, wraps it in the
trainer's engine (DeepSpeed ZeRO with Adam) and counts live tensor storages at three
points: after the model is built (parameters), after the engine is ready and has stepped
once (optimizer states), and after a backward pass (gradients and their buffers). Prints one
JSON object with measured and predicted bytes.

    python -m tools.plan_measure --config configs/tiny/gpt3_tiny.yaml --set model.vocab_size=50257
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import warnings

import torch
from torch import nn

from training.config import load_config
from training.memory import Layout, estimate_memory

class Block(nn.Module):
    """A pre-LayerNorm GPT block with the parameter shapes of the trainer's blocks at TP=1."""

    def __init__(self, h: int, inner: int, ffn: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * inner), nn.Linear(inner, h)
        self.fc1, self.fc2 = nn.Linear(h, ffn), nn.Linear(ffn, h)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, -1))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class ReferenceGPT(nn.Module):
    """Token + position embeddings, blocks, final LayerNorm, output tied to the token embedding."""

    def __init__(self, config):
        super().__init__()
        m = config.model
        h = m.d_model
        self.wte = nn.Embedding(m.padded_vocab_size(1), h)
        self.wpe = nn.Embedding(m.seq_length, h)
        self.blocks = nn.ModuleList(
            Block(h, m.n_heads * m.head_dim, m.ffn_multiplier * h, m.n_heads) for _ in range(m.n_layers))
        self.ln_f = nn.LayerNorm(h)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def live_storages() -> dict[int, int]:
    """data_ptr -> bytes of every tensor storage reachable from Python objects."""
    found = {}
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns of deprecations
        warnings.simplefilter("ignore", FutureWarning)
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        tensors = [obj]
        if isinstance(obj, nn.Parameter) and obj.grad is not None:
            tensors.append(obj.grad)
        for tensor in tensors:
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if storage.nbytes():
                found[storage.data_ptr()] = storage.nbytes()
    return found


def measure(config) -> dict:
    import deepspeed

    precision = config.precision
    model = ReferenceGPT(config)
    start = live_storages()
    ds_config = {
        "train_micro_batch_size_per_gpu": config.train.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    tokens = torch.randint(0, config.model.vocab_size, (config.train.micro_batch_size, config.model.seq_length))
    engine.backward(engine(tokens))
    engine.step()  # Adam states exist from here on
    gc.collect()
    ready = live_storages()
    param_storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                      for p in engine.module.parameters()}
    params = sum(param_storages.values())
    param_ptrs = set(param_storages)
    optimizer = sum(n for ptr, n in ready.items() if ptr not in param_ptrs and ptr not in start)
    engine.backward(engine(tokens))
    after_backward = live_storages()
    gradients = sum(n for ptr, n in after_backward.items() if ptr not in ready)
    layout = Layout(1, 1, 1, config.train.micro_batch_size, config.parallel.zero_stage,
                    config.parallel.activation_checkpointing)
    predicted = estimate_memory(config, layout)
    return {
        "measured": {"parameters": params, "gradients": gradients, "optimizer": optimizer},
        "predicted": {"parameters": predicted.parameters, "gradients": predicted.gradients,
                      "optimizer": predicted.optimizer},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan_measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    if config.parallel.zero_stage not in (1, 2):
        parser.error("only ZeRO stages 1 and 2 keep whole parameters that can be counted here")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    torch.distributed.init_process_group("gloo")
    try:
        print(json.dumps(measure(config)))
    finally:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
