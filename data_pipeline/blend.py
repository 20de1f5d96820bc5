"""The blend JSON: the contract between the data pipeline and the trainer.

```json
{"version": 1,
 "tokenizer": {"type": "gpt2" | "sentencepiece" | "byte-bpe", "path": null | "relative/or/absolute",
               "vocab_size": 50257, "eod_id": 50256},
 "sources": [{"name": "cc", "prefix": "cc_gpt2_text_document", "weight": 0.7,
              "tokens": 123, "documents": 4, "epochs": 0.5 | null}],
 "token_budget": 1000000 | null}
```

Paths (``prefix``, ``tokenizer.path``) are relative to the blend file's directory unless
absolute; `load_blend` returns them absolute. ``weight`` is a source's sampling
probability (weights sum to 1); ``tokens``/``documents`` are the shard's counts
(EOD tokens included); ``epochs`` is how many times the budget repeats the source
(``weight * token_budget / tokens``), null without a budget.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_pipeline import indexed
from common.errors import UserError
from common.files import output_directory, write_text_atomically
BLEND_VERSION = 1
_SOURCE_KEYS = {"name", "prefix", "weight", "tokens", "documents", "epochs"}
_TOP_KEYS = {"version", "tokenizer", "sources", "token_budget"}


@dataclass(frozen=True)
class BlendSource:
    """One source of a blend; `prefix` is absolute after `load_blend`."""

    name: str
    prefix: str
    weight: float
    tokens: int
    documents: int
    epochs: float | None = None


@dataclass(frozen=True)
class Blend:
    """A parsed blend file. `tokenizer` is the JSON object with an absolute ``path``."""

    path: Path
    tokenizer: dict[str, Any]
    sources: list[BlendSource]
    token_budget: int | None = None

    def megatron_blend(self) -> tuple[list[str], list[float]]:
        """``(prefixes, weights)`` as megatron-core's ``BlendedMegatronDatasetConfig(blend=...)`` takes it."""
        return [s.prefix for s in self.sources], [s.weight for s in self.sources]

    def load_tokenizer(self):
        """The tokenizer the shards were written with (checked against vocab_size/eod_id)."""
        from data_pipeline.tokenizers import load_tokenizer

        return load_tokenizer(self.tokenizer)


def load_blend(path: str | os.PathLike, check_files: bool = True) -> Blend:
    """Read and validate a blend file; every path in the result is absolute."""
    path = Path(path).resolve()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"blend file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"blend file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"blend file {path} must hold a JSON object")
    _no_unknown(data, _TOP_KEYS, f"{path}")
    if data.get("version") != BLEND_VERSION:
        raise UserError(f"{path}: version must be {BLEND_VERSION}, got {data.get('version')!r}")
    base = path.parent
    tokenizer = _tokenizer(data.get("tokenizer"), base, path)
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise UserError(f"{path}: sources must be a non-empty list")
    sources = [_source(s, i, base, path, check_files) for i, s in enumerate(raw_sources)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: source names must be unique, got {names}")
    budget = data.get("token_budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0):
        raise UserError(f"{path}: token_budget must be a positive integer or null, got {budget!r}")
    total = sum(s.weight for s in sources)
    if not math.isclose(total, 1.0, rel_tol=1e-6):
        raise UserError(f"{path}: source weights must sum to 1, got {total:.6g}")
    return Blend(path, tokenizer, sources, budget)


def write_blend(path: str | os.PathLike, tokenizer: dict[str, Any], sources: list[BlendSource],
                token_budget: int | None = None, overwrite: bool = True) -> Path:
    """Write a blend file; prefixes and the tokenizer path are stored relative to its directory.
    Without `overwrite` an existing file with another blend is refused (a trainer may use it)."""
    path = Path(path).resolve()
    base = path.parent
    tok = dict(tokenizer)
    if tok.get("path"):
        tok["path"] = _relative(tok["path"], base)
    data = {
        "version": BLEND_VERSION,
        "tokenizer": tok,
        "sources": [dict(asdict(s), prefix=_relative(s.prefix, base)) for s in sources],
        "token_budget": token_budget,
    }
    if not overwrite and path.exists() and path.read_text() != json.dumps(data, indent=2) + "\n":
        raise UserError(f"{path} holds another blend; rerun with --overwrite to replace it, or choose another --output")
    output_directory(path.parent)
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")
    return path


def _relative(p: str | os.PathLike, base: Path) -> str:
    return os.path.relpath(Path(p).resolve(), base)


def _absolute(p: str, base: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def _no_unknown(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _tokenizer(obj: Any, base: Path, where: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: tokenizer must be an object with type, path, vocab_size, eod_id")
    _no_unknown(obj, {"type", "path", "vocab_size", "eod_id"}, f"{where}: tokenizer")
    for key in ("vocab_size", "eod_id"):
        if not isinstance(obj.get(key), int) or obj[key] < 0:
            raise UserError(f"{where}: tokenizer.{key} must be a non-negative integer")
    out = dict(obj)
    out["path"] = _absolute(obj["path"], base) if obj.get("path") else None
    return out


def _source(obj: Any, i: int, base: Path, where: Path, check_files: bool) -> BlendSource:
    label = f"{where}: sources[{i}]"
    if not isinstance(obj, dict):
        raise UserError(f"{label} must be an object")
    _no_unknown(obj, _SOURCE_KEYS, label)
    for key in ("name", "prefix"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise UserError(f"{label}.{key} must be a non-empty string")
    weight = obj.get("weight")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise UserError(f"{label}.weight must be a positive number, got {weight!r}")
    for key in ("tokens", "documents"):
        if not isinstance(obj.get(key), int) or obj[key] < 0:
            raise UserError(f"{label}.{key} must be a non-negative integer")
    epochs = obj.get("epochs")
    if epochs is not None and not isinstance(epochs, (int, float)):
        raise UserError(f"{label}.epochs must be a number or null")
    prefix = _absolute(obj["prefix"], base)
    if check_files and not indexed.exists(prefix):
        raise UserError(f"{label} ({obj['name']}): token shard not found: {prefix}.bin/.idx")
    return BlendSource(obj["name"], prefix, float(weight), obj["tokens"], obj["documents"],
                       None if epochs is None else float(epochs))
