"""`gpt-data tokenizer train`: a sentencepiece BPE tokenizer trained on a sample of the cleaned documents.

The model is lossless on any text: identity normalisation, no dummy prefix, whitespace
kept, byte fallback for characters outside the vocabulary, newline as its own piece.
``<|endoftext|>`` (and any ``--special``) are control symbols: they have ids but plain
text never encodes to them, so only the tokenize stage places EODs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import output_directory
from data_pipeline.shards import discover_shards, read_documents
from data_pipeline.stats import Stats
from data_pipeline.tokenizers import EOD_TOKEN, SentencePieceTokenizer

DEFAULT_SAMPLE_DOCS = 200_000
MAX_LINE_BYTES = 1 << 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a sentencepiece BPE tokenizer",
                                   description="Tokenizer tools.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train sentencepiece BPE on a sample of documents",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: gpt-data tokenizer train --input dedup/ --output tokenizers/cc32k --vocab-size 32000\n"
               "then:    gpt-data tokenize --tokenizer sentencepiece:tokenizers/cc32k.model ...")
    train.add_argument("--input", required=True, help="document shards (file or directory)")
    train.add_argument("--output", required=True, help="model prefix: writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--vocab-size", type=int, default=32000, help="pieces incl. specials (default %(default)s)")
    train.add_argument("--sample-docs", type=int, default=DEFAULT_SAMPLE_DOCS,
                       help="documents drawn uniformly (reservoir sample) from the input (default %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help=f"extra special token besides {EOD_TOKEN} (repeatable)")
    train.add_argument("--character-coverage", type=float, default=0.9995,
                       help="share of characters covered by pieces; the rest fall back to bytes (default %(default)s)")
    train.add_argument("--workers", type=int, default=1, help="sentencepiece training threads (default %(default)s)")
    train.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    tokenizer = train_tokenizer(args.input, args.output, vocab_size=args.vocab_size, sample_docs=args.sample_docs,
                                seed=args.seed, specials=args.special, character_coverage=args.character_coverage,
                                threads=args.workers)
    print(f"tokenizer train: wrote {tokenizer.path} (vocab {tokenizer.vocab_size}, eod id {tokenizer.eod_id}); "
          f"use --tokenizer sentencepiece:{tokenizer.path}", file=sys.stderr)
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
                    character_coverage: float = 0.9995, threads: int = 1) -> SentencePieceTokenizer:
    """Train on a document sample and return the loaded tokenizer (``output.model``)."""
    import sentencepiece as spm

    output = Path(output).resolve()
    output_directory(output.parent)
    texts = sample_documents(input_path, sample_docs, seed)
    controls = [EOD_TOKEN] + [s for s in specials or [] if s != EOD_TOKEN]
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
