"""`gpt-eval`: zero-, one- and few-shot evaluation as in GPT-3, and perplexity on a token shard.

    gpt-eval --checkpoint runs/tiny/checkpoints --shots 0,1,4 --output results.json
    gpt-eval --hf-dir gpt2-dir --tasks configs/eval/capitals.jsonl --decontamination dedup/decontam/stats.json
    gpt-eval --checkpoint runs/tiny/checkpoints --perplexity tests/data/tokens/wiki_gpt2_text_document

Multiple-choice tasks are scored by the log-likelihood of each answer (`acc`) and by the
log-likelihood per answer token (`acc_norm`, length-normalised); completion tasks by
whether greedy decoding (or `--beams N` beam search) reproduces the target (`acc`) and the
target's perplexity.
Fine-tuning tasks (classification, entailment, similarity, and a multiple-choice task the
checkpoint was fine-tuned on) are scored by the head of a checkpoint written by `gpt-finetune`.
Task format: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from common.errors import UserError
from data_pipeline.indexed import exists as shard_exists, read_tokens
from data_pipeline.tokenizers import Tokenizer
from tools.eval_tasks import ANSWER_PREFIX, LANGUAGE_MODEL_KINDS, Task, find_tasks
from training.generation import Beams, beam_search, forward, left_pad
from training.model import GPT

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


@torch.no_grad()
def score(model: GPT, requests: Sequence[Request], batch_size: int, progress: str | None = None) -> list[tuple[float, bool]]:
    """Per request: (log p(continuation | context), whether greedy decoding yields the continuation).

    Contexts too long for the model lose their oldest tokens."""
    model.eval()
    seq = model.cfg.seq_length
    device = model.token_embedding.weight.device
    results = []
    for start in tqdm(range(0, len(requests), batch_size), desc=progress, disable=progress is None, leave=False):
        batch = requests[start:start + batch_size]
        for context, continuation in batch:
            if not context or not continuation or len(continuation) > seq:
                raise UserError(f"cannot score a continuation of {len(continuation)} tokens after "
                                f"{len(context)} context tokens with a {seq}-token model")
        inputs = [(context + continuation)[-(seq + 1):-1] for context, continuation in batch]
        tokens, valid = left_pad(inputs, 0, device)
        logprobs = forward(model, tokens, valid, None).log_softmax(-1)
        for row, (_, continuation) in enumerate(batch):
            predicted = logprobs[row, -len(continuation):]
            target = torch.tensor(continuation, device=device)
            results.append((float(predicted.gather(-1, target[:, None]).sum()),
                            bool((predicted.argmax(-1) == target).all())))
    return results


def evaluate_task(model: GPT, tokenizer: Tokenizer, task: Task, shots: int, seed: int,
                  batch_size: int = 8, beams: Beams | None = None) -> dict:
    """Metrics of `task` with `shots` in-context examples (drawn reproducibly from `seed`).

    With `beams`, a completion task's `acc` is whether beam search reproduces the target (else greedy decoding)."""
    if task.kind not in LANGUAGE_MODEL_KINDS:
        raise UserError(f"task {task.name} is a {task.kind} task: score it with a checkpoint from gpt-finetune")
    requests, owner = [], []
    for index, example in enumerate(task.examples):
        context = tokenizer.encode(task.prompt(index, shots, seed))
        for answer in task.answers(example):
            requests.append((context, tokenizer.encode(ANSWER_PREFIX + answer)))
            owner.append(index)
    scores = score(model, requests, batch_size, progress=f"{task.name} {shots}-shot")
    per_example: list[list[tuple[float, bool, int]]] = [[] for _ in task.examples]
    for (logprob, greedy), index, (_, continuation) in zip(scores, owner, requests):
        per_example[index].append((logprob, greedy, len(continuation)))
    result = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(task.examples)}
    if task.kind == "multiple_choice":
        labels = [e["label"] for e in task.examples]
        pick = [max(range(len(c)), key=lambda i: c[i][0]) for c in per_example]
        pick_norm = [max(range(len(c)), key=lambda i: c[i][0] / c[i][2]) for c in per_example]
        result["acc"] = sum(p == label for p, label in zip(pick, labels)) / len(labels)
        result["acc_norm"] = sum(p == label for p, label in zip(pick_norm, labels)) / len(labels)
    else:
        (only,) = zip(*per_example)
        if beams is None:
            result["acc"] = sum(greedy for _, greedy, _ in only) / len(only)
        else:
            seq = model.cfg.seq_length
            found = [beam_search(model, [context[-(seq - len(target)):]], len(target), beams,
                                 eod_id=tokenizer.eod_id)[0] == target for context, target in requests]
            result["acc"], result["beams"] = sum(found) / len(found), beams.width
        result["target_ppl"] = math.exp(-sum(lp for lp, _, _ in only) / sum(n for _, _, n in only))
    return result


@torch.no_grad()
def perplexity(model: GPT, prefix: str, max_tokens: int = 0, batch_size: int = 8) -> dict:
    """Perplexity over a Megatron token shard, in non-overlapping windows of the model's context."""
    if not shard_exists(prefix):
        raise UserError(f"no token shard {prefix}.bin/.idx")
    tokens = read_tokens(prefix).astype("int64")
    if max_tokens:
        tokens = tokens[:max_tokens]
    seq = model.cfg.seq_length
    windows = [tokens[i:i + seq + 1].tolist() for i in range(0, len(tokens) - 1, seq)]
    requests = [(w[:1], w[1:]) for w in windows if len(w) > 1]
    scores = score(model, requests, batch_size, progress=f"perplexity {Path(prefix).name}")
    predicted = sum(len(c) for _, c in requests)
    nll = -sum(lp for lp, _ in scores) / predicted
    return {"task": f"perplexity:{Path(prefix).name}", "kind": "perplexity", "tokens": predicted,
            "nll": nll, "ppl": math.exp(nll)}


# --------------------------------------------------------------------------- decontamination


def read_decontamination(path: str | None) -> dict | None:
    """The per-benchmark report of `gpt-data decontaminate` (its stats.json, or the output directory)."""
    if path is None:
        return None
    file = Path(path) / "stats.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise UserError(f"decontamination report not found: {file}")
    report = json.loads(file.read_text()).get("benchmarks")
    if not isinstance(report, dict):
        raise UserError(f"{file} has no 'benchmarks' section: is it the stats.json of gpt-data decontaminate?")
    return report


def decontamination_status(task: Task, report: dict | None) -> dict:
    """Whether this task's examples were checked against the training data, and what was found."""
    entry = None if report is None else report.get(task.name)
    if entry is None:
        return {"checked": False}
    status = {"checked": True, "contaminated_examples": entry["contaminated_examples"],
              "documents_touched": entry["documents"], "documents_dropped": entry["documents_dropped"]}
    if entry["examples"] != len(task.examples):
        status["note"] = (f"the report covers {entry['examples']} examples, the task has {len(task.examples)}: "
                          "it was checked in another version")
    return status


def describe_decontamination(status: dict) -> str:
    if not status["checked"]:
        return "not checked"
    text = f"checked: {status['contaminated_examples']} found"
    return text + " (other version)" if "note" in status else text


# --------------------------------------------------------------------------- command


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gpt-eval")
    for column in ("task", "kind", "shots", "examples", "acc", "acc_norm", "ppl", "decontamination"):
        table.add_column(column)
    for r in results:
        ppl = r.get("ppl", r.get("target_ppl"))
        table.add_row(r["task"], r["kind"], str(r.get("shots", "")), str(r.get("examples", r.get("tokens", ""))),
                      f"{r['acc']:.3f}" if "acc" in r else "", f"{r['acc_norm']:.3f}" if "acc_norm" in r else "",
                      f"{ppl:.2f}" if ppl is not None else "",
                      describe_decontamination(r["decontamination"]) if "decontamination" in r else "")
    Console(stderr=True).print(table)


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--shots must be comma-separated integers, got {text!r}") from None
    if not shots or min(shots) < 0:
        raise UserError(f"--shots must be non-negative integers, got {text!r}")
    return shots


def build_parser() -> argparse.ArgumentParser:
    from tools.model_source import add_model_args

    parser = argparse.ArgumentParser(prog="gpt-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--tasks", default=None,
                        help="task file, directory of task files, or comma-separated built-in task names "
                             "(default: every task in configs/eval/)")
    parser.add_argument("--shots", default="0,1,4",
                        help="comma-separated numbers of in-context examples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="seed for drawing in-context examples")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--perplexity", metavar="PREFIX", action="append", default=[],
                        help="also report perplexity on this Megatron token shard (repeatable); "
                             "with --perplexity and no --tasks, only perplexity is measured")
    parser.add_argument("--max-tokens", type=int, default=0, help="perplexity on at most this many tokens (0: all)")
    parser.add_argument("--decontamination", metavar="STATS",
                        help="stats.json (or output directory) of `gpt-data decontaminate` run on the training data "
                             "with these tasks as --benchmarks: reported per task")
    parser.add_argument("--beams", type=int, default=0,
                        help="completion tasks: acc by beam search with N beams (GPT-3: 4; default: greedy decoding)")
    parser.add_argument("--length-penalty", type=float, default=0.6,
                        help="with --beams: finished beams score sum(log p) / new_tokens ** X (default %(default)s)")
    parser.add_argument("--output", help="write the results as JSON here")
    return parser


def scored_by_head(loaded, task: Task) -> bool:
    """Fine-tuning kinds need a head; a multiple-choice task uses one only if it was fine-tuned on that task
    (other multiple-choice tasks are scored few-shot by log-likelihood, like any model)."""
    if task.kind not in LANGUAGE_MODEL_KINDS:
        return True
    return loaded.info is not None and (loaded.info.task, loaded.info.kind) == (task.name, task.kind)


def run(args: argparse.Namespace) -> list[dict]:
    from tools.finetune import evaluate_finetuned
    from tools.model_source import load_from_args

    shots = parse_shots(args.shots)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.beams < 0 or args.beams == 1:
        raise UserError("--beams must be at least 2 (or 0: greedy decoding)")
    beams = Beams(args.beams, args.length_penalty) if args.beams else None
    report = read_decontamination(args.decontamination)
    tasks = find_tasks(args.tasks) if args.tasks or not args.perplexity else []
    loaded = load_from_args(args)
    results = []
    for task in tasks:
        if scored_by_head(loaded, task):
            if loaded.head is None:
                raise UserError(f"task {task.name} is a {task.kind} task: score it with a gpt-finetune checkpoint")
            runs = [evaluate_finetuned(loaded, task, args.batch_size)]
        else:
            runs = [evaluate_task(loaded.model, loaded.tokenizer, task, k, args.seed, args.batch_size, beams)
                    for k in shots]
        for result in runs:
            result["decontamination"] = decontamination_status(task, report)
            results.append(result)
    results += [perplexity(loaded.model, prefix, args.max_tokens, args.batch_size) for prefix in args.perplexity]
    print_table(results)
    if args.output:
        Path(args.output).write_text(json.dumps({"seed": args.seed, "results": results}, indent=2) + "\n")
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f"gpt-eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
