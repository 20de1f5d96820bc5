"""The on-disk checkpoint format, readable without a process group or DeepSpeed.

A checkpoint is a directory `<checkpoint.dir>/<tag>/`:

    manifest.json              written last: files (bytes, xxh3), layout, config, trainer state,
                               and where each parameter's TP shards live
    state/pp{P}-tp{T}-dp{D}.pt  {name: {"param", "exp_avg", "exp_avg_sq"}} in fp32, TP-local
    rng/rank{R:05d}.pt         every rank's RNG states (torch, numpy, python, TP dropout stream)

Parameters use the names of the single-process `training.model.GPT` whatever the
pipeline layout was, and each tensor is one TP rank's shard along `partition_dim`
(null: replicated). The padded vocabulary is kept: padded rows take part in the
softmax. Any reader (resume at another TP/PP/DP, conversion, inference) merges the
shards along `partition_dim` and cuts them again as it needs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import xxhash

from data_pipeline.errors import UserError

FORMAT = "gpt-checkpoint/1"
MANIFEST = "manifest.json"
LATEST = "latest"
OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq")
# Model keys that decide parameter shapes: a checkpoint only loads into a model that agrees on them.
SHAPE_KEYS = ("arch", "n_layers", "d_model", "n_heads", "d_head", "seq_length", "vocab_size", "ffn_multiplier")


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit the model."""


def state_file(pp_rank: int, tp_rank: int, dp_rank: int) -> str:
    return f"state/pp{pp_rank}-tp{tp_rank}-dp{dp_rank}.pt"


def rng_file(rank: int) -> str:
    return f"rng/rank{rank:05d}.pt"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_64()
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new, never a torn file (also across a SIGKILL)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- finding checkpoints

def latest_tag(directory: str | Path) -> str | None:
    pointer = Path(directory) / LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from either itself or its parent (then `latest` names it)."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if (path / LATEST).exists():
        return path / latest_tag(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.name.endswith(".partial") or any(path.glob("state/*.pt")):
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {MANIFEST} (its save was interrupted)")
    raise CheckpointError(f"{path} is not a checkpoint: it has neither {MANIFEST} nor a {LATEST} pointer")


def read_manifest(path: str | Path) -> dict:
    path = resolve(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupt ({err})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    manifest["path"] = str(path)
    return manifest


def check_files(manifest: dict, names: list[str] | None = None, checksums: bool = True) -> list[str]:
    """Problems with the listed files (all by default): missing, wrong size, wrong checksum."""
    root = Path(manifest["path"])
    problems = []
    for name in manifest["files"] if names is None else names:
        expected, path = manifest["files"][name], root / name
        if not path.exists():
            problems.append(f"checkpoint {root}: file {name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"checkpoint {root}: file {name} has {path.stat().st_size} bytes, "
                            f"the manifest says {expected['bytes']} (truncated or overwritten)")
        elif checksums and file_digest(path) != expected["xxh3"]:
            problems.append(f"checkpoint {root}: file {name} fails its checksum (corrupt)")
    return problems


def check_model_matches(manifest: dict, model_cfg: dict) -> None:
    saved = manifest["config"]["model"]
    for key in SHAPE_KEYS:
        if saved.get(key) != model_cfg.get(key):
            raise CheckpointError(f"checkpoint {manifest['path']} has model.{key}={saved.get(key)} but the "
                                  f"config says model.{key}={model_cfg.get(key)}")


def vocab_multiple_for(manifest: dict, tp: int) -> int:
    """model.make_vocab_size_divisible_by that gives the checkpoint's padded vocabulary at this TP."""
    padded = manifest["padded_vocab_size"]
    if padded % tp:
        raise CheckpointError(f"checkpoint {manifest['path']}: its padded vocabulary ({padded}) does not split "
                              f"over TP={tp}")
    return padded // tp


# --------------------------------------------------------------------------- tensors

def merge_shards(shards: list[torch.Tensor], partition_dim: int | None) -> torch.Tensor:
    return shards[0] if partition_dim is None or len(shards) == 1 else torch.cat(shards, dim=partition_dim)


def split_shard(full: torch.Tensor, partition_dim: int | None, tp: int, tp_rank: int) -> torch.Tensor:
    if partition_dim is None or tp == 1:
        return full
    return full.chunk(tp, dim=partition_dim)[tp_rank].contiguous()


class ShardReader:
    """Reads full (TP-merged) or re-split tensors of a checkpoint; files are memory-mapped and opened once."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.root = Path(manifest["path"])
        self._open: dict[str, dict] = {}

    def _file(self, name: str) -> dict:
        if name not in self._open:
            try:
                self._open[name] = torch.load(self.root / name, map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable shard is the same user-facing problem
                raise CheckpointError(f"checkpoint {self.root}: cannot read {name} ({err})") from None
        return self._open[name]

    def names(self) -> list[str]:
        return list(self.manifest["params"])

    def has(self, key: str) -> bool:
        return key == "param" or self.manifest["optimizer"]

    def full(self, name: str, key: str = "param") -> torch.Tensor:
        info = self.manifest["params"].get(name)
        if info is None:
            raise CheckpointError(f"checkpoint {self.root} has no parameter {name}")
        shards = []
        for location in info["shards"]:
            entry = self._file(location)
            if name not in entry or key not in entry[name]:
                raise CheckpointError(f"checkpoint {self.root}: {location} lacks {name}/{key}")
            shards.append(entry[name][key])
        tensor = merge_shards(shards, info["partition_dim"])
        if list(tensor.shape) != info["shape"]:
            raise CheckpointError(f"checkpoint {self.root}: {name} has shape {list(tensor.shape)}, "
                                  f"the manifest says {info['shape']}")
        return tensor

    def shard(self, name: str, tp: int, tp_rank: int, key: str = "param") -> torch.Tensor:
        return split_shard(self.full(name, key), self.manifest["params"][name]["partition_dim"], tp, tp_rank)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights under `training.model.GPT` names."""
        return {name: self.full(name).clone() for name in self.names()}


# --------------------------------------------------------------------------- writing without an engine

def write_weights(output: str | Path, state_dict: dict[str, torch.Tensor], partition_dims: dict[str, int | None],
                  config: dict, tp: int, pp: int, stage_of: dict[str, int], padded_vocab_size: int) -> Path:
    """A weights-only checkpoint (no optimizer or trainer state) at a TP x PP layout, e.g. from Hugging Face.

    `stage_of` maps each parameter to its pipeline stage; the result loads like any checkpoint.
    """
    output = Path(output)
    tag = tag_for(0)
    root = output / tag
    (root / "state").mkdir(parents=True, exist_ok=True)
    params: dict[str, dict] = {}
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            shard = {}
            for name, full in state_dict.items():
                if stage_of[name] != pp_rank:
                    continue
                shard[name] = {"param": split_shard(full.float(), partition_dims[name], tp, tp_rank).clone()}
                info = params.setdefault(name, {"shape": list(full.shape), "partition_dim": partition_dims[name],
                                                "shards": []})
                if partition_dims[name] is not None or tp_rank == 0:
                    info["shards"].append(state_file(pp_rank, tp_rank, 0))
            torch.save(shard, root / state_file(pp_rank, tp_rank, 0))
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.pt"))
    manifest = {
        "format": FORMAT, "tag": tag, "optimizer": False, "trainer": None,
        "layout": {"tp": tp, "pp": pp, "dp": 1, "world": tp * pp},
        "padded_vocab_size": padded_vocab_size, "config": config, "params": params,
        "files": {name: {"bytes": (root / name).stat().st_size, "xxh3": file_digest(root / name)} for name in files},
    }
    write_text_atomically(root / MANIFEST, json.dumps(manifest, indent=1))
    write_text_atomically(output / LATEST, tag)
    return root
