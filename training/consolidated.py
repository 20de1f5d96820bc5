"""Any checkpoint of ours as one single-process `training.model.GPT` (for generation, evaluation, fine-tuning, export)."""
from __future__ import annotations

import copy
import datetime
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from training.checkpoint_files import CheckpointError, ShardReader, verified_manifest, vocab_multiple_for
from common.options import build
from training.config import Config
from training.distributed import start_default_group
from training.model import GPT, without_initialisation


def ensure_single_process_groups() -> None:
    """megatron-core's layers need its parallel state: a 1-process gloo group with TP = PP = 1."""
    if not dist.is_initialized():
        start_default_group("gloo", rank=0, world=1, timeout=datetime.timedelta(minutes=5))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    elif parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise RuntimeError("load_gpt builds a single-process model but tensor parallelism is already set up")


def checkpoint_config(manifest: dict) -> Config:
    """The run config stored in a checkpoint, with the vocabulary padding the checkpoint has at TP = 1."""
    cfg = build(Config, copy.deepcopy(manifest["config"]))
    cfg.parallel.tp = cfg.parallel.pp = 1
    cfg.model.make_vocab_size_divisible_by = vocab_multiple_for(manifest, 1)
    return cfg


def load_gpt(checkpoint: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> tuple[GPT, Config]:
    """Load any of our checkpoints (any TP/PP/DP layout, or `gpt-convert from-hf` output) as one model.

    `checkpoint` is a checkpoint directory (`.../step00000100`) or its parent (its `latest`
    is used). Returns `(model, config)`: the model is in eval mode on `device` in `dtype`,
    with the padded vocabulary of the checkpoint (`model(tokens)` gives logits
    [batch, seq, padded_vocab]; ids >= `config.model.vocab_size` are padding);
    `config` is the run's `training.config.Config`. Files are verified against the
    manifest's checksums first; a missing, corrupt or mismatched checkpoint raises
    `CheckpointError` (a `common.errors.UserError`) naming the problem.
    Sets up a 1-process gloo group and megatron-core's parallel state if none exists.
    """
    manifest = verified_manifest(checkpoint)
    cfg = checkpoint_config(manifest)
    ensure_single_process_groups()
    with without_initialisation():  # every weight comes from the checkpoint
        model = GPT(cfg.model, cfg.train.seed)
    state = ShardReader(manifest).state_dict()
    expected = dict(model.named_parameters())  # state_dict() also holds megatron-core's `_extra_state`
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {manifest['path']} lacks {len(missing)} parameters, e.g. {missing[0]}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint {manifest['path']}: {name} has shape {list(state[name].shape)}, "
                                  f"the model's is {list(tensor.shape)}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(state[name])
    return model.to(device=device, dtype=dtype).eval(), cfg
