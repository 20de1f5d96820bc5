"""`gpt-generate`: sample text from one of our checkpoints or a Hugging Face GPT-2 directory.

    gpt-generate --checkpoint runs/tiny/checkpoints --prompt "The quick brown fox" --max-new-tokens 40
    gpt-generate --hf-dir gpt2-dir --prompt-ids 464,2068 --greedy --output out.json
    gpt-generate --hf-dir gpt2-dir --prompt "Hello" --prompt "Once upon a time" --top-p 0.9 --stop "\\n\\n"
    gpt-generate --hf-dir gpt2-dir --prompt "The capital of France is" --beams 4 --length-penalty 0.6

Decodes with a key/value cache; several prompts run as one left-padded batch. Sampling
uses top-k 40 by default (GPT-2's samples), `--top-p` for nucleus sampling, `--greedy`
for the argmax; the same `--seed` gives the same tokens. Generation ends at the
end-of-text token, after `--max-new-tokens`, or once the text contains a `--stop` string
(the text is cut before it; `tokens` keep everything generated). `--beams N` decodes by
beam search instead (as `transformers`; `--length-penalty`, default 0.6, as in GPT-3).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.errors import UserError
from data_pipeline.tokenizers import load_tokenizer
from tools.model_source import add_model_args, load_from_args
from training.generation import Beams, Sampling, beam_search, generate


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """Token ids of the tokenizer's vocabulary (the model's padded rows are not tokens)."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--prompt-ids must be comma-separated token ids, got {text!r}") from None
    if not ids:
        raise UserError("--prompt-ids is empty")
    wrong = [i for i in ids if not 0 <= i < vocab_size]
    if wrong:
        raise UserError(f"--prompt-ids: {wrong[0]} is not a token id (the tokenizer has ids 0 to {vocab_size - 1})")
    return ids


def cut_at_stop(text: str, stops: list[str]) -> str:
    positions = [text.find(s) for s in stops if s in text]
    return text[: min(positions)] if positions else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    prompt.add_argument("--prompt-ids", action="append", help="prompt as comma-separated token ids (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default %(default)s")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--temperature", type=float, default=1.0, help="default %(default)s")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0: all "
                                                              "(default %(default)s, as GPT-2)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument("--beams", type=int, default=0,
                        help="beam search with N beams instead of sampling (GPT-3's completions: 4; default: off)")
    parser.add_argument("--length-penalty", type=float, default=0.6,
                        help="beam search: finished beams score sum(log p) / new_tokens ** X (default %(default)s)")
    parser.add_argument("--stop", action="append", default=[], help="stop once the text contains this (repeatable)")
    parser.add_argument("--output", help="write {tokens, text} (lists for several prompts) as JSON here")
    return parser


def check(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.temperature <= 0:
        raise UserError("--temperature must be positive (use --greedy for the argmax)")
    if args.top_k < 0:
        raise UserError("--top-k must be >= 0")
    if not 0 < args.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if args.beams < 0 or args.beams == 1:
        raise UserError("--beams must be at least 2 (or 0: no beam search)")
    if args.beams and args.stop:
        raise UserError("--stop does not apply to beam search (beams end at the end-of-text token)")


def run(args: argparse.Namespace) -> dict:
    check(args)
    tokenizer = load_tokenizer(args.tokenizer)  # prompts are checked before the (slow) model load
    prompts = ([tokenizer.encode(p) for p in args.prompt] if args.prompt else
               [parse_ids(p, tokenizer.vocab_size) for p in args.prompt_ids])
    if any(not p for p in prompts):
        raise UserError("a prompt encodes to no tokens")
    loaded = load_from_args(args, tokenizer)
    longest = max(len(p) for p in prompts) + args.max_new_tokens
    if longest > loaded.model.cfg.seq_length:
        raise UserError(f"prompt plus --max-new-tokens is {longest} tokens, the model's context is "
                        f"{loaded.model.cfg.seq_length}")
    sampling = Sampling(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed)
    stop = (lambda new: any(s in tokenizer.decode(new) for s in args.stop)) if args.stop else None
    if args.beams:
        outputs = beam_search(loaded.model, prompts, args.max_new_tokens,
                              Beams(width=args.beams, length_penalty=args.length_penalty), eod_id=tokenizer.eod_id)
    else:
        outputs = generate(loaded.model, prompts, args.max_new_tokens, sampling, eod_id=tokenizer.eod_id, stop=stop)
    texts = [cut_at_stop(tokenizer.decode(tokens), args.stop) for tokens in outputs]
    for prompt, text in zip(args.prompt or args.prompt_ids, texts):
        print(f"{prompt}{text}" if args.prompt else text)
        print("-" * 40)
    single = len(outputs) == 1
    result = {"tokens": outputs[0] if single else outputs, "text": texts[0] if single else texts}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f"gpt-generate: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
