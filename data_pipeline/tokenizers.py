"""One tokenizer interface for the data tools, the trainer and the tools.

Three kinds, all loaded from files on disk (nothing is downloaded at run time):

- ``gpt2``: GPT-2's byte-level BPE through tiktoken, from the bundled
  ``assets/gpt2.tiktoken`` (or another ``.tiktoken`` file with GPT-2's ranks).
- ``sentencepiece``: a sentencepiece model, e.g. one trained by ``gpt-data tokenizer train``.
- ``byte-bpe``: a GPT-2 style byte-level BPE directory (``vocab.json`` + ``merges.txt``,
  Hugging Face's format) through the ``tokenizers`` library, e.g. one trained by
  ``gpt-data tokenizer train --type byte-bpe`` or written by `save_hf_tokenizer`.

`load_tokenizer(spec)` accepts ``"gpt2"``, ``"gpt2:PATH"``, ``"sentencepiece:PATH"``,
``"byte-bpe:DIR"``, a path ending in ``.tiktoken`` or ``.model``, or the ``tokenizer``
object of a blend JSON (``{"type", "path", "vocab_size", "eod_id"}``). Document text is encoded as plain text:
a literal ``<|endoftext|>`` inside a document never becomes the EOD token, so only the
tokenize stage decides where documents end.
"""
from __future__ import annotations

import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.files import write_text_atomically

EOD_TOKEN = "<|endoftext|>"
ASSETS = Path(__file__).resolve().parent / "assets"
GPT2_BPE_FILE = ASSETS / "gpt2.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB_SIZE = 50257
TYPES = ("gpt2", "sentencepiece", "byte-bpe")
BYTE_BPE_FILES = ("vocab.json", "merges.txt")


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


class ByteBPETokenizer(Tokenizer):
    """GPT-2 style byte-level BPE from ``DIR/vocab.json`` + ``DIR/merges.txt`` via `tokenizers`.

    The pipeline is GPT-2's (byte-level pre-tokenizer with GPT-2's regex, no prefix space);
    ``<|endoftext|>`` must be in the vocabulary and is the EOD. Specials (the EOD and the
    special added tokens of ``DIR/tokenizer.json``) are not matched inside text here, so
    document text containing them encodes as plain text.
    """

    type = "byte-bpe"

    def __init__(self, path: str | os.PathLike):
        from tokenizers.models import BPE

        self.path = Path(path).resolve()
        missing = [name for name in BYTE_BPE_FILES if not (self.path / name).is_file()]
        if missing:
            raise UserError(f"byte-bpe tokenizer directory {self.path} lacks {' and '.join(missing)}")
        try:
            vocab, merges = BPE.read_file(*(str(self.path / name) for name in BYTE_BPE_FILES))
            self._tokenizer = byte_level_bpe(vocab, merges)
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception for malformed files
            raise UserError(f"not a byte-level BPE vocab.json/merges.txt pair: {self.path}: {err}") from None
        if EOD_TOKEN not in vocab:
            raise UserError(f"byte-bpe tokenizer {self.path} has no {EOD_TOKEN} in vocab.json")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise UserError(f"the ids of {self.path / 'vocab.json'} are not 0..{len(vocab) - 1}, each once")
        self.vocab, self.merges = vocab, merges
        self.specials = [EOD_TOKEN] + [s for s in _added_specials(self.path / "tokenizer.json") if s != EOD_TOKEN]
        self.vocab_size = len(vocab)
        self.eod_id = vocab[EOD_TOKEN]
        self.name = f"byte-bpe:{self.path.name}"

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        if num_threads <= 1:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], specials: Sequence[str] = ()):
    """A `tokenizers.Tokenizer` with GPT-2's byte-level pipeline over `vocab` and `merges`;
    `specials` (already in `vocab`) become added tokens, as in Hugging Face's GPT-2 files."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    tokenizer = HFTokenizer(BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> list[Path]:
    """Write `tokenizer` as Hugging Face GPT-2 tokenizer files in `directory` (see `write_byte_bpe`).

    GPT-2's tiktoken ranks are turned back into its vocabulary and merges (needs
    transformers for GPT-2's byte-to-unicode table); sentencepiece models are refused.
    """
    if isinstance(tokenizer, GPT2Tokenizer):
        vocab, merges = _vocab_and_merges_from_ranks(tokenizer.path)
        return write_byte_bpe({**vocab, EOD_TOKEN: tokenizer.eod_id}, merges, directory)
    if isinstance(tokenizer, ByteBPETokenizer):
        return write_byte_bpe(tokenizer.vocab, tokenizer.merges, directory, tokenizer.specials)
    raise UserError(f"Hugging Face tokenizer files are written only for byte-level BPE tokenizers "
                    f"(gpt2, byte-bpe), not {tokenizer.name}")


def write_byte_bpe(vocab: dict[str, int], merges: Sequence[tuple[str, str]], directory: str | os.PathLike,
                   specials: Sequence[str] = (EOD_TOKEN,)) -> list[Path]:
    """Write a byte-level BPE (`specials` already in `vocab`, the EOD first) into `directory`,
    each file atomically: ``vocab.json`` + ``merges.txt`` (what `ByteBPETokenizer` and GPT-2's
    tokenizers read), ``tokenizer.json`` (the `tokenizers` library), ``tokenizer_config.json``
    and ``special_tokens_map.json`` (transformers' AutoTokenizer, offline)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special_map: dict[str, Any] = {"bos_token": specials[0], "eos_token": specials[0], "unk_token": specials[0]}
    if len(specials) > 1:
        special_map["additional_special_tokens"] = list(specials[1:])
    config = {**special_map, "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
              "add_bos_token": False, "errors": "replace"}
    texts = {
        "vocab.json": json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer.json": byte_level_bpe(vocab, list(merges), specials).to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special_map, indent=2),
    }
    for name, text in texts.items():
        write_text_atomically(directory / name, text)
    return [directory / name for name in texts]


def _added_specials(tokenizer_json: Path) -> list[str]:
    """The special added tokens of a ``tokenizer.json`` (none if there is no such file)."""
    if not tokenizer_json.is_file():
        return []
    return [t["content"] for t in json.loads(tokenizer_json.read_text()).get("added_tokens", []) if t.get("special")]


def _vocab_and_merges_from_ranks(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocab.json / merges.txt content from a tiktoken rank file.

    Token strings use GPT-2's byte-to-unicode mapping; the merge that made the token of
    rank r is the pair BPE reaches on its bytes using only merges of rank below r.
    """
    from tiktoken.load import load_tiktoken_bpe
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        raise UserError("GPT-2's Hugging Face tokenizer files need transformers: pip install 'gpt-stack[hf]'") from None

    ranks = load_tiktoken_bpe(str(path))
    to_unicode = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            parts = _bpe(token, ranks, below=rank)
            if len(parts) != 2:
                raise UserError(f"{path}: token of rank {rank} is not a merge of two lower-ranked tokens")
            merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def _bpe(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """`token` split by byte-level BPE using only the merges of rank < `below`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        rank, index = min((ranks.get(a + b, below), i) for i, (a, b) in enumerate(itertools.pairwise(parts)))
        if rank >= below:
            break
        parts[index:index + 2] = [parts[index] + parts[index + 1]]
    return parts


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
    raise UserError(f"unknown tokenizer {text!r}: use gpt2, gpt2:FILE.tiktoken, sentencepiece:FILE.model, "
                    "byte-bpe:DIR, or a path ending in .tiktoken / .model")


def _resolve(path: str, base_dir: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def _build(kind: str, path: Path | None) -> Tokenizer:
    if kind == "gpt2":
        return GPT2Tokenizer(path)
    if kind == "byte-bpe":
        if path is None:
            raise UserError("a byte-bpe tokenizer needs its directory: byte-bpe:DIR (vocab.json + merges.txt)")
        return ByteBPETokenizer(path)
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
