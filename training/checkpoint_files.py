"""The on-disk checkpoint format, readable without a process group or DeepSpeed.

A checkpoint is a directory `<checkpoint.dir>/<tag>/`:

    manifest.json              written last: files (bytes, xxh3), layout, config, trainer state,
                               and where each parameter's TP shards live
    state/pp{P}-tp{T}-dp{D}.pt  {name: {"param", "exp_avg", "exp_avg_sq"}} in fp32, TP-local
    rng/rank{R:05d}.pt         every rank's RNG states (torch, numpy, python, TP dropout stream)
                               as tensors and ints

Every file loads with `torch.load(weights_only=True)`: tensors and plain values, never code.
Names read from a checkpoint (`latest`'s tag, the manifest's files) must stay inside it.

Parameters use the names of the single-process `training.model.GPT` whatever the
pipeline layout was, and each tensor is one TP rank's shard along `partition_dim`
(null: replicated). Any reader (resume at another TP/PP/DP, conversion, inference)
merges the shards along `partition_dim` and cuts them again as it needs, re-padding the
vocabulary to its own layout's (padded rows are masked out of the model's softmax).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xxhash

try:  # what numpy arrays unpickle through (older RNG files), in numpy 2 and in numpy 1.x
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct

from common.errors import UserError
from common.files import fsync_dir, write_text_atomically

FORMAT = "gpt-checkpoint/1"
MANIFEST = "manifest.json"
LATEST = "latest"
OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq")
# Model keys that decide parameter shapes: a checkpoint only loads into a model that agrees on them.
SHAPE_KEYS = ("arch", "n_layers", "d_model", "n_heads", "d_head", "seq_length", "vocab_size", "ffn_multiplier")
VOCAB_PARAMETER = "token_embedding.embedding.weight"  # one row per id of the padded vocabulary
TAG = re.compile(r"step\d{8}")
NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")
# RNG files written before they held tensors only: numpy's key array as numpy pickled it, and nothing else.
LEGACY_RNG_TYPES = (_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType)


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


def publish(partial: Path, manifest: dict, after=lambda phase: None) -> Path:
    """Complete a checkpoint written into `<tag>.partial/`: manifest last, rename to `<tag>`, then move `latest`.

    `after(phase)` runs after each of these steps (fault injection)."""
    write_text_atomically(partial / MANIFEST, json.dumps(manifest, indent=1))
    after("after-manifest")
    final = partial.with_name(manifest["tag"])
    os.replace(partial, final)
    fsync_dir(final.parent)
    after("after-rename")
    write_text_atomically(final.parent / LATEST, manifest["tag"])
    after("after-latest")
    return final


# --------------------------------------------------------------------------- reading files safely

def checked_name(name: str, root: Path, what: str, nested: bool = False) -> str:
    """A name read from a checkpoint, refused unless it is relative and stays inside `root` (no `..`).

    `nested` names may have `/`-separated parts (`state/pp0-tp0-dp0.pt`); tags may not."""
    parts = name.split("/") if nested and isinstance(name, str) else [name]
    if not all(isinstance(p, str) and NAME_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise CheckpointError(f"checkpoint {root}: {what} {name!r}, which is not a plain name inside it; refusing it")
    return name


def _unsafe_globals(path: Path) -> str:
    try:
        return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown objects"
    except Exception:  # noqa: BLE001 - only used to name what was refused
        return "unknown objects"


def load_plain(path: Path, what: str, allowed: tuple = ()):
    """`torch.load` that never runs code from the file: tensors and plain values (and the `allowed` types) only."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{what} holds more than tensors and plain values (unpickling it would call "
                              f"{_unsafe_globals(path)}); refusing to load it") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{what} cannot be read ({reason})") from None


def read_rng(path: Path, what: str) -> dict:
    """A rank's RNG states, checked by setting them in fresh generators; numpy's as `np.random.set_state` takes it."""
    state = load_plain(path, what, LEGACY_RNG_TYPES)
    try:
        name, keys, *rest = state["numpy"]
        state["numpy"] = (name, np.asarray(keys, dtype=np.uint32), *rest)
        random.Random().setstate(state["python"])
        np.random.RandomState().set_state(state["numpy"])
        torch.Generator().set_state(state["torch"])
        generators = [state["tp"]] if state["tp"] is not None else []  # None: never seeded
        generators += [state["cuda"]] if "cuda" in state else []
        if not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in generators):
            raise TypeError("the TP and CUDA states must be byte tensors")
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{what} is not a set of RNG states ({err})") from None
    return state


def read_file(root: Path, name: str):
    """A checkpoint file's content, loaded without running code from it."""
    what = f"checkpoint {root}: file {name}"
    return read_rng(root / name, what) if name.startswith("rng/") else load_plain(root / name, what)


# --------------------------------------------------------------------------- finding checkpoints

def latest_tag(directory: str | Path) -> str | None:
    pointer = Path(directory) / LATEST
    return checked_name(pointer.read_text().strip(), Path(directory), f"{LATEST} names") if pointer.exists() else None


def complete_checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoints (`step<N>/` with a manifest) in a checkpoint directory, oldest first."""
    return sorted(p for p in directory.glob("step*") if TAG.fullmatch(p.name) and (p / MANIFEST).is_file())


def resume_point(directory: Path) -> tuple[Path | None, str | None]:
    """The checkpoint a run continues from: the newest complete one, and a note when `latest` does not name it.

    `latest` lags after a save killed between its rename and moving `latest`; a lost or damaged
    `latest` must not make a run start afresh over complete checkpoints."""
    pointer = directory / LATEST
    tag = pointer.read_text().strip() if pointer.exists() else None
    if tag:
        checked_name(tag, directory, f"{LATEST} names")
    complete = complete_checkpoints(directory)
    if not complete:
        if tag is None:
            return None, None
        raise CheckpointError(f"{pointer} names {tag or 'nothing'}, but {directory} holds no complete checkpoint; "
                              f"remove {pointer} to start afresh")
    newest = complete[-1]
    if tag == newest.name:
        return newest, None
    if not tag:
        state = "is missing" if tag is None else "is empty"
    elif (directory / tag / MANIFEST).is_file():
        state = f"names {tag}, but {newest.name} is newer (its save ended before it moved {LATEST})"
    else:
        state = f"names {tag}, which is not a complete checkpoint"
    return newest, f"{pointer} {state}: continuing from the newest complete checkpoint, {newest.name}"


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from either itself or its parent (then `latest` names it)."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if (path / LATEST).exists():
        tag = latest_tag(path)
        if not (path / tag / MANIFEST).exists():
            raise CheckpointError(f"{path / LATEST} names {tag}, which " + (
                f"is incomplete: it has no {MANIFEST}" if (path / tag).is_dir() else "does not exist"))
        return path / tag
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
    _check_names(manifest, path)
    manifest["path"] = str(path)
    return manifest


def _check_names(manifest: dict, root: Path) -> None:
    """Every file the manifest names stays inside the checkpoint, and tensors are read only from listed files."""
    try:
        for name in manifest["files"]:
            checked_name(name, root, "its manifest names file", nested=True)
        for name, info in manifest["params"].items():
            for location in info["shards"]:
                if location not in manifest["files"]:
                    raise CheckpointError(f"checkpoint {root}: {name} is stored in {location!r}, which its "
                                          f"{MANIFEST} does not list")
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {root}: {MANIFEST} is malformed ({type(err).__name__}: {err})") from None


def check_files(manifest: dict, names: list[str] | None = None, checksums: bool = True) -> list[str]:
    """Problems with the listed files (all by default): missing, wrong size, wrong checksum, or content that
    is more than tensors and plain values (checked with the checksums)."""
    root = Path(manifest["path"])
    problems = []
    for name in manifest["files"] if names is None else names:
        expected, path = manifest["files"].get(name), root / name
        if expected is None:
            problems.append(f"checkpoint {root}: file {name} is not listed in its {MANIFEST}")
        elif not path.exists():
            problems.append(f"checkpoint {root}: file {name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"checkpoint {root}: file {name} has {path.stat().st_size} bytes, "
                            f"the manifest says {expected['bytes']} (truncated or overwritten)")
        elif checksums and file_digest(path) != expected["xxh3"]:
            problems.append(f"checkpoint {root}: file {name} fails its checksum (corrupt)")
        elif checksums:
            try:
                read_file(root, name)
            except CheckpointError as err:
                problems.append(str(err))
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

def verified_manifest(checkpoint: str | Path, names: list[str] | None = None) -> dict:
    """The checkpoint's manifest once the listed files (all by default) pass `check_files`; else a
    `CheckpointError` naming the first problem (and how many more there are)."""
    manifest = read_manifest(checkpoint)
    problems = check_files(manifest, names)
    if problems:
        raise CheckpointError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return manifest


def merge_shards(shards: list[torch.Tensor], partition_dim: int | None) -> torch.Tensor:
    return shards[0] if partition_dim is None or len(shards) == 1 else torch.cat(shards, dim=partition_dim)


def repad_vocabulary(rows: torch.Tensor, padded_vocab_size: int) -> torch.Tensor:
    """Vocabulary rows cut or zero-extended to `padded_vocab_size` (weights and Adam moments alike).

    Padded rows get no probability and no gradient (`TokenEmbedding.logits`), so any padding is
    the same model, and a zero row with zero moments stays out of every update but weight decay."""
    if rows.shape[0] >= padded_vocab_size:
        return rows[:padded_vocab_size]
    return torch.cat([rows, rows.new_zeros(padded_vocab_size - rows.shape[0], *rows.shape[1:])])


def split_shard(full: torch.Tensor, partition_dim: int | None, tp: int, tp_rank: int) -> torch.Tensor:
    if partition_dim is None or tp == 1:
        return full
    return full.chunk(tp, dim=partition_dim)[tp_rank].contiguous()


class ShardReader:
    """Reads full (TP-merged) or re-split tensors of a checkpoint; files are memory-mapped and opened once.

    The vocabulary comes re-padded to `padded_vocab_size` (default: the checkpoint's own)."""

    def __init__(self, manifest: dict, padded_vocab_size: int | None = None):
        self.manifest = manifest
        self.root = Path(manifest["path"])
        self.padded_vocab_size = padded_vocab_size or manifest["padded_vocab_size"]
        self._open: dict[str, dict] = {}

    def _file(self, name: str) -> dict:
        if name not in self._open:
            self._open[name] = read_file(self.root, name)
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
            if not isinstance(entry.get(name, {}).get(key), torch.Tensor):  # absent, or None (a 16-bit ZeRO-0 save)
                raise CheckpointError(f"checkpoint {self.root}: {location} lacks {name}/{key}")
            shards.append(entry[name][key])
        tensor = merge_shards(shards, info["partition_dim"])
        if list(tensor.shape) != info["shape"]:
            raise CheckpointError(f"checkpoint {self.root}: {name} has shape {list(tensor.shape)}, "
                                  f"the manifest says {info['shape']}")
        return repad_vocabulary(tensor, self.padded_vocab_size) if name == VOCAB_PARAMETER else tensor

    def shard(self, name: str, tp: int, tp_rank: int, key: str = "param") -> torch.Tensor:
        return split_shard(self.full(name, key), self.manifest["params"][name]["partition_dim"], tp, tp_rank)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights under `training.model.GPT` names."""
        return {name: self.full(name).clone() for name in self.names()}

    def lazy_state(self) -> LazyWeights:
        """`state_dict()`'s weights, each read when it is asked for (see `LazyWeights`)."""
        return LazyWeights(self)


class LazyWeights(Mapping):
    """A checkpoint's full weights by name, read (memory-mapped, TP-merged) on access and not kept: a writer
    that takes one output file's tensors at a time holds that file in memory, not the model (a 175B model's
    fp32 weights are ~700 GB)."""

    def __init__(self, reader: ShardReader):
        self.reader = reader

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.reader.manifest["params"]:
            raise KeyError(name)
        return self.reader.full(name)

    def __iter__(self):
        return iter(self.reader.names())

    def __len__(self) -> int:
        return len(self.reader.names())


# --------------------------------------------------------------------------- writing without an engine

def refuse_existing(output: Path) -> None:
    """Tools write new checkpoints only: a directory that already holds one is left as it is."""
    if (output / LATEST).exists() or complete_checkpoints(output):
        raise CheckpointError(f"{output} already holds a checkpoint; not overwriting it (write to a new directory)")


def write_weights(output: str | Path, state_dict: Mapping[str, torch.Tensor], partition_dims: dict[str, int | None],
                  config: dict, tp: int, pp: int, stage_of: dict[str, int], padded_vocab_size: int,
                  extra_files: dict[str, dict[str, torch.Tensor]] | None = None, extra: dict | None = None) -> Path:
    """A weights-only checkpoint (no optimizer or trainer state) at a TP x PP layout, e.g. from Hugging Face.

    `stage_of` maps each parameter to its pipeline stage; the result loads like any checkpoint. Each tensor
    of `state_dict` is looked up once per TP rank of its stage and copied into one file at a time, so a
    `LazyWeights` source is never held whole.
    `extra_files` (name -> tensors) are written and verified with it, `extra` keys join its manifest
    (a fine-tuned head). An `output` that already holds a checkpoint is refused, never overwritten.
    """
    output = Path(output)
    tag = tag_for(0)
    refuse_existing(output)
    root = output / f"{tag}.partial"
    shutil.rmtree(root, ignore_errors=True)  # an interrupted earlier write
    (root / "state").mkdir(parents=True)
    params: dict[str, dict] = {}
    for pp_rank in range(pp):
        names = [name for name in state_dict if stage_of[name] == pp_rank]
        for tp_rank in range(tp):
            shard = {}
            for name in names:
                full = state_dict[name]
                shard[name] = {"param": split_shard(full.float(), partition_dims[name], tp, tp_rank).clone()}
                info = params.setdefault(name, {"shape": list(full.shape), "partition_dim": partition_dims[name],
                                                "shards": []})
                if partition_dims[name] is not None or tp_rank == 0:
                    info["shards"].append(state_file(pp_rank, tp_rank, 0))
            torch.save(shard, root / state_file(pp_rank, tp_rank, 0))
    for name, tensors in (extra_files or {}).items():
        torch.save(tensors, root / name)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.pt"))
    manifest = {
        "format": FORMAT, "tag": tag, "optimizer": False, "trainer": None,
        "layout": {"tp": tp, "pp": pp, "dp": 1, "world": tp * pp},
        "padded_vocab_size": padded_vocab_size, "config": config, "params": params,
        "files": {name: {"bytes": (root / name).stat().st_size, "xxh3": file_digest(root / name)} for name in files},
        **(extra or {}),
    }
    return publish(root, manifest)
