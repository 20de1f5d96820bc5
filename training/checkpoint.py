"""Save and load training state: atomic, layout-independent, verified before anything is loaded.

Save (every rank, collectively): each parameter's fp32 master weight and Adam moments
are gathered over its ZeRO data-parallel group (DeepSpeed's `safe_get_full_*`), and
the data-parallel ranks share the writing. Files go to `<tag>.partial/`; once every
rank has written, the files are checksummed (spread over ranks), rank 0 writes the
manifest, renames the directory to `<tag>` and only then moves `latest`. A process
killed at any point before leaves `latest` on the previous, complete checkpoint.

Load: the manifest is checked against the model config, every file's size and
checksum is verified, each rank assembles its own shards (merging and re-cutting TP
shards, finding parameters whatever pipeline stage held them) and all ranks agree that
nothing is missing before any tensor is copied in. The same layout restores every
rank's RNG streams too, so the continued run is bit-for-bit the uninterrupted one.
The format is described in `training/checkpoint_files.py` and docs/checkpoints.md.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.pipe import PipelineModule
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state, safe_set_full_fp32_param,
                             safe_set_full_optimizer_state)

from training.checkpoint_files import (FORMAT, LATEST, OPTIMIZER_KEYS, CheckpointError, ShardReader, check_files,
                                       check_model_matches, complete_checkpoints, file_digest, latest_tag, publish,
                                       read_file, read_manifest, resume_point, rng_file, state_file, tag_for,
                                       write_text_atomically)
from training.config import Config, ModelConfig
from training.deepspeed_compat import relink_optimizer_state
from training.distributed import Layout
from training.faults import fault_point
from training.rng import seed_everything, tensor_parallel_rng


def checkpoint_dir(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.checkpoint.dir or run_dir / "checkpoints")


# --------------------------------------------------------------------------- parameter names

def partition_dim(param: torch.nn.Parameter) -> int | None:
    """The dimension megatron-core split this parameter along under TP (None: replicated)."""
    return int(param.partition_dim) if getattr(param, "tensor_model_parallel", False) else None


def canonical_parameters(module: torch.nn.Module, model: ModelConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """(name in the single-process GPT, parameter) for this rank's module, sorted by name.

    DeepSpeed's PipelineModule names a layer's parameters by the layer's index in
    `ModelConfig.layers()`, and the tied token embedding's under `tied_modules`; a task head
    (`loss_fn.*`, training/parallel.py's `HeadLoss`) has the same name in both."""
    layers = model.layers()
    named = []
    for name, param in module.named_parameters():
        if isinstance(module, PipelineModule):
            head, _, rest = name.partition(".")
            if head == "tied_modules":
                name = rest
            elif head.isdigit():
                name = f"{layers[int(head)]}.{rest}"
        named.append((name, param))
    return sorted(named, key=lambda item: item[0])


def _written_here(name: str, param, layout: Layout) -> bool:
    """Replicated tensors are written by TP rank 0 only, the tied embedding by the first stage only."""
    if partition_dim(param) is None and layout.tp_rank != 0:
        return False
    return not (name.startswith("token_embedding.") and layout.pp > 1 and layout.pp_rank != 0)


# --------------------------------------------------------------------------- optimizer access

def is_zero3(param) -> bool:
    return hasattr(param, "ds_id")


def model_shape(param: torch.nn.Parameter) -> torch.Size:
    """The parameter's (TP-local) shape; ZeRO-3 keeps it in `ds_shape` while `param` itself is empty."""
    return param.ds_shape if is_zero3(param) else param.shape


def _full_state(param, key: str | None, optimizer) -> torch.Tensor | None:
    """This TP rank's full fp32 weight (key None) or Adam moment, gathered over ZeRO partitions."""
    if hasattr(param, "_hp_mapping") or is_zero3(param):
        value = safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
    else:  # no ZeRO: the torch optimizer holds the parameter itself
        value = param.data if key is None else optimizer.state.get(param, {}).get(key)
    return None if value is None else value.detach().float().cpu()


def _set_full_state(param, key: str | None, value: torch.Tensor, optimizer) -> None:
    if hasattr(param, "_hp_mapping") or is_zero3(param):
        value = value.to(param.device)
        if key is None:
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, key)
    elif key is not None:
        optimizer.state[param][key] = value.to(param.device).clone()
    if key is None:
        _set_forward_weights(param, value)


def _set_forward_weights(param, value: torch.Tensor) -> None:
    """The low-precision copy the forward pass uses (the fp32 master is the optimizer's).

    Under ZeRO-3 `param` is an empty placeholder between uses and its data is this rank's
    slice in `param.ds_tensor`: gather it, set it, and let DeepSpeed cut the slices again
    (collective over the parameter's ZeRO group; every rank sets the same value)."""
    with torch.no_grad(), GatheredParameters([param], modifier_rank=0, enabled=is_zero3(param)):
        param.data.copy_(value.to(param.dtype))


def _base_optimizer(engine):
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _adam_step(engine) -> int:
    steps = [int(s["step"]) for s in _base_optimizer(engine).state.values() if "step" in s]
    return max(steps, default=0)


def _set_adam_step(engine, step: int) -> None:
    for state in _base_optimizer(engine).state.values():
        if "step" in state:
            state["step"] = torch.full_like(state["step"], float(step)) if torch.is_tensor(state["step"]) else step


def _loss_scaler_state(engine) -> dict:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if scaler is None:
        return {}
    return {k: v for k, v in vars(scaler).items() if isinstance(v, (int, float, bool)) and not k.startswith("_")}


def _adam_parameters(engine) -> list[torch.Tensor]:
    """The tensors Adam keeps state for. ZeRO-3 hands its flat fp32 partitions to Adam's
    param groups only for the duration of a step (the groups are empty otherwise)."""
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flat is not None:
        return list(flat)
    return [param for group in _base_optimizer(engine).param_groups for param in group["params"]]


def _link_optimizer_state(engine) -> None:
    """Make every parameter's view of its slice of Adam's state exist.

    DeepSpeed (0.19.8) links these lazily after the first parameter group's step, when the
    later groups (here: the no-weight-decay group) have no state yet, so their views stay
    empty; a fresh engine has no Adam state at all. Create zero state where missing, relink.
    """
    base = _base_optimizer(engine)
    step_on_device = base.defaults.get("fused") or base.defaults.get("capturable")  # where torch's Adam keeps it
    for param in _adam_parameters(engine):
        state = base.state[param]
        if not state:
            state["step"] = torch.tensor(0.0, device=param.device if step_on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    relink_optimizer_state(engine.optimizer)


# --------------------------------------------------------------------------- RNG

def rng_state() -> dict:
    """Every stream as tensors, ints and tuples, so that the file loads with `weights_only=True`."""
    name, keys, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
             "torch": torch.get_rng_state(), "tp": tensor_parallel_rng().state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `read_rng` returns."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel_rng().state = state["tp"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------- save

def _layout_record(layout: Layout, cfg: Config) -> dict:
    return {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "world": layout.world,
            "zero_stage": cfg.parallel.zero_stage, "precision": cfg.precision}


def save(engine, cfg: Config, layout: Layout, directory: Path, trainer_state: dict, extra: dict | None = None) -> Path:
    """Write a checkpoint of the current step on every rank; returns its directory once `latest` names it.

    `extra` keys join the manifest (gpt-finetune's task record)."""
    deepspeed_engine = engine.engine
    step = trainer_state["step"]
    tag = tag_for(step)
    if (directory / tag).exists():  # every rank sees it: all refuse together
        raise CheckpointError(f"checkpoint {directory / tag} already exists; not overwriting it (move it away to save "
                              f"step {step} here)")
    partial = directory / f"{tag}.partial"
    if layout.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        for sub in ("state", "rng"):
            (partial / sub).mkdir(parents=True, exist_ok=True)
    dist.barrier()

    _link_optimizer_state(deepspeed_engine)
    shard, entries = {}, {}
    for index, (name, param) in enumerate(canonical_parameters(engine.module, cfg.model)):
        values = {"param": _full_state(param, None, deepspeed_engine.optimizer)}  # collective over DP
        for key in OPTIMIZER_KEYS:
            values[key] = _full_state(param, key, deepspeed_engine.optimizer)
        if index % layout.dp == layout.dp_rank and _written_here(name, param, layout):
            shard[name] = values
            entries[name] = {"shape": list(values["param"].shape), "partition_dim": partition_dim(param),
                             "tp_rank": layout.tp_rank}
    own_file = state_file(layout.pp_rank, layout.tp_rank, layout.dp_rank)
    fault_point("save", step, "before-shards")
    torch.save(shard, partial / own_file)
    del shard
    torch.save(rng_state(), partial / rng_file(layout.rank))
    fault_point("save", step, "after-shards")
    dist.barrier()

    files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*.pt"))
    digests = {name: {"bytes": (partial / name).stat().st_size, "xxh3": file_digest(partial / name)}
               for i, name in enumerate(files) if i % layout.world == layout.rank}
    gathered = [None] * layout.world
    dist.all_gather_object(gathered, (own_file, entries, digests))
    if layout.rank == 0:
        manifest = {
            "format": FORMAT, "tag": tag, "optimizer": True,
            "layout": _layout_record(layout, cfg),
            "padded_vocab_size": cfg.model.padded_vocab_size(layout.tp),
            "config": cfg.to_dict(),
            "trainer": dict(trainer_state, adam_step=_adam_step(deepspeed_engine),
                            global_steps=deepspeed_engine.global_steps,
                            global_samples=deepspeed_engine.global_samples,
                            skipped_steps=deepspeed_engine.skipped_steps,
                            loss_scaler=_loss_scaler_state(deepspeed_engine)),
            "params": _parameter_index(gathered),
            "files": {name: info for _, _, d in gathered for name, info in sorted(d.items())},
            **(extra or {}),
        }
        publish(partial, manifest, lambda phase: fault_point("save", step, phase))
        apply_retention(directory, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every)
    dist.barrier()
    return directory / tag


def _parameter_index(gathered) -> dict:
    """name -> full shape, partition dim and the files holding its TP shards in TP order."""
    pieces: dict[str, list] = {}
    for own_file, entries, _ in gathered:
        for name, entry in entries.items():
            pieces.setdefault(name, []).append((entry, own_file))
    index = {}
    for name, found in sorted(pieces.items()):
        found.sort(key=lambda item: item[0]["tp_rank"])
        dim, shape = found[0][0]["partition_dim"], list(found[0][0]["shape"])
        if dim is not None:
            shape[dim] = sum(entry["shape"][dim] for entry, _ in found)
        index[name] = {"shape": shape, "partition_dim": dim, "shards": [f for _, f in found]}
    return index


def apply_retention(directory: Path, keep_last: int, keep_every: int) -> None:
    """Keep the newest `keep_last` checkpoints plus every `keep_every`-th step (0: no such rule).

    Only checkpoints older than the one `latest` names (just completed) are ever deleted."""
    if keep_last <= 0:
        return
    current = latest_tag(directory)
    for path in complete_checkpoints(directory)[:-keep_last]:
        step = int(path.name[len("step"):])
        if path.name < current and not (keep_every and step % keep_every == 0):
            shutil.rmtree(path, ignore_errors=True)
    for stale in directory.glob("step*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- load

def find_resume_point(cfg: Config, run_dir: Path) -> dict | None:
    """The manifest to start from: this run's newest complete checkpoint (normally `latest`'s), else
    `checkpoint.load`, else None (fresh start).

    When `latest` is missing, damaged or behind, rank 0 says so and, once the checkpoint is known to be
    this model's (a foreign directory is refused untouched), points `latest` at it again."""
    directory = checkpoint_dir(cfg, run_dir)
    path, note = resume_point(directory)
    if path is None:
        return read_manifest(cfg.checkpoint.load) if cfg.checkpoint.load else None
    manifest = read_manifest(path)
    if note and dist.get_rank() == 0:
        print(f"[pretrain] {note}", flush=True)
        check_model_matches(manifest, cfg.to_dict()["model"])
        write_text_atomically(directory / LATEST, path.name)
    return manifest


def fit_config(cfg: Config, manifest: dict) -> None:
    """Check the model config against the checkpoint (its vocabulary is re-padded to this layout's on load)."""
    check_model_matches(manifest, cfg.to_dict()["model"])


def _agree(layout: Layout, problems: list[str]) -> None:
    """Raise the same CheckpointError on every rank if any rank found a problem."""
    gathered = [None] * layout.world
    dist.all_gather_object(gathered, problems)
    found = [p for rank_problems in gathered for p in rank_problems]
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise CheckpointError(found[0] + more)


def load(engine, cfg: Config, layout: Layout, manifest: dict, fresh_prefix: str | None = None) -> dict:
    """Load a checkpoint into the engine on every rank; returns the trainer state ({} for weights-only).

    From a weights-only checkpoint, parameters named `fresh_prefix...` keep their initial values
    (a new task head on a pretrained trunk). RNG streams are restored separately (`restore_rng`), just
    before training goes on: building datasets and the like in between may draw from them."""
    deepspeed_engine = engine.engine
    files = sorted(manifest["files"])
    _agree(layout, check_files(manifest, [f for i, f in enumerate(files) if i % layout.world == layout.rank]))

    reader = ShardReader(manifest, cfg.model.padded_vocab_size(layout.tp))  # rows (and Adam moments) cut or added
    params = canonical_parameters(engine.module, cfg.model)
    if fresh_prefix and manifest["trainer"] is None:
        params = [(name, param) for name, param in params if not name.startswith(fresh_prefix)]
    keys = ["param", *OPTIMIZER_KEYS] if manifest["optimizer"] else ["param"]
    staged, problems = [], []
    for name, param in params:
        try:
            values = {k: reader.shard(name, layout.tp, layout.tp_rank, k) if partition_dim(param) is not None
                      else reader.full(name, k) for k in keys}
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if values["param"].shape != model_shape(param):
            problems.append(f"checkpoint {manifest['path']}: {name} has shape {list(values['param'].shape)} "
                            f"here but the model's is {list(model_shape(param))}")
        staged.append((param, values))
    _agree(layout, problems)

    _link_optimizer_state(deepspeed_engine)
    for param, values in staged:  # every rank has everything: now copy in
        _set_full_state(param, None, values["param"], deepspeed_engine.optimizer)
        for key in OPTIMIZER_KEYS if manifest["optimizer"] else ():
            _set_full_state(param, key, values[key], deepspeed_engine.optimizer)
    trainer = manifest["trainer"]
    if trainer is None:  # weights only (e.g. converted from Hugging Face): a fresh run from these weights
        return {}
    _set_adam_step(deepspeed_engine, trainer["adam_step"])
    deepspeed_engine.global_steps = trainer["global_steps"]
    deepspeed_engine.global_samples = trainer["global_samples"]
    deepspeed_engine.skipped_steps = trainer["skipped_steps"]
    scaler = getattr(deepspeed_engine.optimizer, "loss_scaler", None)
    for key, value in trainer["loss_scaler"].items():
        if scaler is not None and hasattr(scaler, key):
            setattr(scaler, key, value)
    return trainer


def restore_rng(manifest: dict, cfg: Config, layout: Layout) -> None:
    """Same layout: every rank continues its own streams. Another layout: fresh streams derived from the step."""
    if manifest["trainer"] is None:
        return
    saved = manifest["layout"]
    same_layout = all(saved[k] == v for k, v in (("tp", layout.tp), ("pp", layout.pp), ("dp", layout.dp)))
    step = manifest["trainer"]["step"]
    if same_layout:
        set_rng_state(read_file(Path(manifest["path"]), rng_file(layout.rank)))
    else:
        seed_everything(cfg.train.seed + step, layout.pp_rank, layout.dp_rank, layout.tp_rank)
