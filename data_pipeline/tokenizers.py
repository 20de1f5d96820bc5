"""One tokenizer interface for the data tools, the trainer and the tools.

Two kinds, both loaded from files on disk (nothing is downloaded at run time):

- ``gpt2``: GPT-2's byte-level BPE through tiktoken, from the bundled
  ``assets/gpt2.tiktoken`` (or another ``.tiktoken`` file with GPT-2's ranks).
- ``sentencepiece``: a sentencepiece model, e.g. one trained by ``gpt-data tokenizer train``.

`load_tokenizer(spec)` accepts ``"gpt2"``, ``"gpt2:PATH"``, ``"sentencepiece:PATH"``, a
path ending in ``.tiktoken`` or ``.model``, or the ``tokenizer`` object of a blend JSON
(``{"type", "path", "vocab_size", "eod_id"}``). Document text is encoded as plain text:
a literal ``<|endoftext|>`` inside a document never becomes the EOD token, so only the
tokenize stage decides where documents end.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError

EOD_TOKEN = "<|endoftext|>"
ASSETS = Path(__file__).resolve().parent / "assets"
GPT2_BPE_FILE = ASSETS / "gpt2.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB_SIZE = 50257
TYPES = ("gpt2", "sentencepiece")


class Tokenizer(ABC):
    """Text <-> token ids. ``vocab_size`` counts every id the tokenizer can emit (specials included)."""

    type: str
    name: str
    path: Path | None
    vocab_size: int
    eod_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no EOD appended)."""

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text; `num_threads` > 1 uses the library's own threads."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    @property
    def dtype(self) -> type[np.unsignedinteger] | type[np.signedinteger]:
        """Smallest Megatron token dtype for this vocabulary: uint16 if every id fits, else int32."""
        return np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32

    def spec(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """The blend JSON ``tokenizer`` object; `path` relative to `relative_to` when given."""
        path = None
        if self.path is not None and self.path != GPT2_BPE_FILE:
            path = os.path.relpath(self.path, relative_to) if relative_to is not None else str(self.path)
        return {"type": self.type, "path": path, "vocab_size": self.vocab_size, "eod_id": self.eod_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (50257 ids, EOD = 50256) via tiktoken from a ``.tiktoken`` rank file."""

    type = "gpt2"

    def __init__(self, path: str | os.PathLike | None = None):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import r50k_pat_str

        self.path = Path(path).resolve() if path is not None else GPT2_BPE_FILE
        if not self.path.is_file():
            raise UserError(f"GPT-2 BPE file not found: {self.path}")
        expected = GPT2_BPE_SHA256 if self.path == GPT2_BPE_FILE else None
        try:
            ranks = load_tiktoken_bpe(str(self.path), expected_hash=expected)
        except ValueError as err:
            raise UserError(f"not a tiktoken BPE file: {self.path}: {err}") from None
        self.eod_id = len(ranks)
        self._encoding = tiktoken.Encoding(
            name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
            special_tokens={EOD_TOKEN: self.eod_id},
        )
        self.vocab_size = self._encoding.n_vocab
        self.name = "gpt2" if self.path == GPT2_BPE_FILE else f"gpt2:{self.path.name}"

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        if num_threads <= 1:
            return [self._encoding.encode_ordinary(t) for t in texts]
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode([int(i) for i in ids])


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; its EOD is the ``<|endoftext|>`` piece (a control symbol)."""

    type = "sentencepiece"

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise UserError(f"sentencepiece model not found: {self.path}")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as err:
            raise UserError(f"not a sentencepiece model: {self.path}: {err}") from None
        self.vocab_size = self._sp.get_piece_size()
        self.eod_id = self._sp.piece_to_id(EOD_TOKEN)
        if self.eod_id == self._sp.unk_id():
            raise UserError(f"sentencepiece model {self.path} has no {EOD_TOKEN} piece "
                            "(train it with `gpt-data tokenizer train`)")
        self.name = f"sentencepiece:{self.path.name}"

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


def load_tokenizer(spec: str | os.PathLike | dict[str, Any] | Tokenizer,
                   base_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer named by `spec`; relative paths are resolved against `base_dir`.

    A dict (a blend's ``tokenizer`` object) is checked: its ``vocab_size`` and ``eod_id``
    must match the loaded files, so token shards are never read with the wrong vocabulary.
    """
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec, base_dir)
    text = os.fspath(spec)
    kind, _, path = text.partition(":")
    if kind in TYPES:
        return _build(kind, _resolve(path, base_dir) if path else None)
    if text.endswith(".tiktoken"):
        return _build("gpt2", _resolve(text, base_dir))
    if text.endswith(".model"):
        return _build("sentencepiece", _resolve(text, base_dir))
    raise UserError(f"unknown tokenizer {text!r}: use gpt2, gpt2:FILE.tiktoken, "
                    "sentencepiece:FILE.model, or a path ending in .tiktoken / .model")


def _resolve(path: str, base_dir: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def _build(kind: str, path: Path | None) -> Tokenizer:
    if kind == "gpt2":
        return GPT2Tokenizer(path)
    if path is None:
        raise UserError("a sentencepiece tokenizer needs a model path: sentencepiece:FILE.model")
    return SentencePieceTokenizer(path)


def _from_dict(spec: dict[str, Any], base_dir: str | os.PathLike | None) -> Tokenizer:
    kind = spec.get("type")
    if kind not in TYPES:
        raise UserError(f"tokenizer.type must be one of {', '.join(TYPES)}, got {kind!r}")
    path = spec.get("path")
    tokenizer = _build(kind, _resolve(path, base_dir) if path else None)
    for key in ("vocab_size", "eod_id"):
        want = spec.get(key)
        if want is not None and want != getattr(tokenizer, key):
            raise UserError(f"tokenizer.{key} is {want} but {tokenizer.name} has "
                            f"{getattr(tokenizer, key)}: shards and tokenizer do not match")
    return tokenizer
