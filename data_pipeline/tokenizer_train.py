"""`gpt-data tokenizer train`: a BPE tokenizer trained on a sample of the cleaned documents.

Two types, both lossless on any text and both with ``<|endoftext|>`` (and any
``--special``) as special tokens that plain text never encodes to, so only the tokenize
stage places EODs:

- ``sentencepiece`` (default): identity normalisation, no dummy prefix, whitespace kept,
  byte fallback for characters outside the vocabulary, newline as its own piece;
  writes OUTPUT.model and OUTPUT.vocab.
- ``byte-bpe``: GPT-2's byte-level BPE (Hugging Face ``tokenizers``): the 256 bytes, then
  the merges, then the specials (``<|endoftext|>`` last as in GPT-2, unless --special adds
  more), so --vocab-size = 256 + merges + specials; GPT-1's 40,000 merges is
  --vocab-size 40257. Writes the directory OUTPUT (vocab.json, merges.txt, tokenizer.json,
  tokenizer_config.json, special_tokens_map.json) and refuses to overwrite one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import fsync_dir, output_directory
from data_pipeline.shards import discover_shards, read_documents
from data_pipeline.stats import Stats
from data_pipeline.tokenizers import EOD_TOKEN, ByteBPETokenizer, SentencePieceTokenizer, Tokenizer, write_byte_bpe

DEFAULT_SAMPLE_DOCS = 200_000
MAX_LINE_BYTES = 1 << 16
BYTE_ALPHABET = 256
DEFAULT_CHARACTER_COVERAGE = 0.9995


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a BPE tokenizer (sentencepiece or byte-level)",
                                   description="Tokenizer tools.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a BPE tokenizer on a sample of documents",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  gpt-data tokenizer train --input dedup/ --output tokenizers/cc32k --vocab-size 32000\n"
               "  then gpt-data tokenize --tokenizer sentencepiece:tokenizers/cc32k.model ...\n"
               "  gpt-data tokenizer train --type byte-bpe --input dedup/ --output tokenizers/gpt1-bpe "
               "--vocab-size 40257   # GPT-1's 40,000 merges\n"
               "  then gpt-data tokenize --tokenizer byte-bpe:tokenizers/gpt1-bpe ...")
    train.add_argument("--type", choices=("sentencepiece", "byte-bpe"), default="sentencepiece",
                       help="tokenizer type (default %(default)s)")
    train.add_argument("--input", required=True, help="document shards (file or directory)")
    train.add_argument("--output", required=True,
                       help="sentencepiece: model prefix (writes PREFIX.model, PREFIX.vocab); "
                            "byte-bpe: a new directory")
    train.add_argument("--vocab-size", type=int, default=32000, help="ids incl. specials (default %(default)s)")
    train.add_argument("--sample-docs", type=int, default=DEFAULT_SAMPLE_DOCS,
                       help="documents drawn uniformly (reservoir sample) from the input (default %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help=f"extra special token besides {EOD_TOKEN} (repeatable)")
    train.add_argument("--character-coverage", type=float,
                       help="sentencepiece only: share of characters covered by pieces; the rest fall back "
                            f"to bytes (default {DEFAULT_CHARACTER_COVERAGE})")
    train.add_argument("--workers", type=int, default=1,
                       help="sentencepiece training threads (default %(default)s); byte-bpe uses the tokenizers "
                            "library's threads (RAYON_NUM_THREADS)")
    train.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.type == "byte-bpe":
        if args.character_coverage is not None:
            raise UserError("--character-coverage applies to --type sentencepiece only "
                            "(byte-bpe covers every byte)")
        tokenizer: Tokenizer = train_byte_bpe(args.input, args.output, vocab_size=args.vocab_size,
                                              sample_docs=args.sample_docs, seed=args.seed, specials=args.special)
    else:
        coverage = DEFAULT_CHARACTER_COVERAGE if args.character_coverage is None else args.character_coverage
        tokenizer = train_tokenizer(args.input, args.output, vocab_size=args.vocab_size, sample_docs=args.sample_docs,
                                    seed=args.seed, specials=args.special, character_coverage=coverage,
                                    threads=args.workers)
    print(f"tokenizer train: wrote {tokenizer.path} (vocab {tokenizer.vocab_size}, eod id {tokenizer.eod_id}); "
          f"use --tokenizer {tokenizer.type}:{tokenizer.path}", file=sys.stderr)
    return 0


def sample_documents(input_path: str | Path, count: int, seed: int = 0) -> list[str]:
    """A uniform sample of `count` non-empty document texts (reservoir sampling, in input order)."""
    if count < 1:
        raise UserError(f"--sample-docs must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[int, str]] = []
    seen = 0
    stats = Stats()
    for shard in discover_shards(input_path):
        for doc in read_documents(shard, stats):
            if not doc.text:
                continue
            if len(reservoir) < count:
                reservoir.append((seen, doc.text))
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < count:
                    reservoir[slot] = (seen, doc.text)
            seen += 1
    if not reservoir:
        raise UserError(f"no documents with text under {input_path}")
    return [text for _, text in sorted(reservoir)]


def _lines(texts: list[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line and len(line.encode("utf-8")) <= MAX_LINE_BYTES:
                yield line


def train_tokenizer(input_path: str | Path, output: str | Path, *, vocab_size: int = 32000,
                    sample_docs: int = DEFAULT_SAMPLE_DOCS, seed: int = 0, specials: list[str] | None = None,
                    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
                    threads: int = 1) -> SentencePieceTokenizer:
    """Train sentencepiece BPE on a document sample and return the loaded tokenizer (``output.model``)."""
    import sentencepiece as spm

    output = Path(output).resolve()
    output_directory(output.parent)
    texts = sample_documents(input_path, sample_docs, seed)
    controls = _specials(specials)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(texts), model_prefix=str(output), model_type="bpe",
            vocab_size=vocab_size, byte_fallback=True, character_coverage=character_coverage,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=MAX_LINE_BYTES,
            control_symbols=controls, user_defined_symbols=["\n"],
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=max(1, threads),
            input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
        )
    except RuntimeError as err:
        raise UserError(f"sentencepiece training failed: {str(err).strip().splitlines()[-1]}") from None
    return SentencePieceTokenizer(f"{output}.model")


def train_byte_bpe(input_path: str | Path, output: str | Path, *, vocab_size: int = 32000,
                   sample_docs: int = DEFAULT_SAMPLE_DOCS, seed: int = 0,
                   specials: list[str] | None = None) -> ByteBPETokenizer:
    """Train GPT-2 style byte-level BPE on a document sample into the new directory `output`
    (published whole by one rename) and return the loaded tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    output = Path(output).resolve()
    if output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise UserError(f"--output {output} already exists: a byte-bpe tokenizer is written to a new "
                        "(or empty) directory, never over another")
    specials = _specials(specials)
    if vocab_size < BYTE_ALPHABET + len(specials):
        raise UserError(f"--vocab-size {vocab_size} is below the {BYTE_ALPHABET} bytes plus "
                        f"{len(specials)} special token(s) of a byte-level BPE")
    output_directory(output.parent)
    texts = sample_documents(input_path, sample_docs, seed)
    trained = HFTokenizer(BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(texts, BpeTrainer(
        vocab_size=vocab_size - len(specials), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(trained.to_str())["model"]
    vocab = model["vocab"]
    if len(vocab) + len(specials) < vocab_size:
        raise UserError(f"byte-bpe training: {len(texts)} documents support only {len(model['merges'])} merges "
                        f"(vocab {len(vocab) + len(specials)}): lower --vocab-size or train on more text")
    vocab.update({token: len(vocab) + i for i, token in enumerate(specials)})
    staging = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    try:
        write_byte_bpe(vocab, [tuple(pair) for pair in model["merges"]], staging, specials)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(output.parent)
    return ByteBPETokenizer(output)


def _specials(extra: list[str] | None) -> list[str]:
    """The EOD, then the extra special tokens (once each)."""
    return list(dict.fromkeys([EOD_TOKEN, *(extra or [])]))
