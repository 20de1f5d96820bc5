"""`gpt-eval`: zero-, one- and few-shot evaluation as in GPT-3, and perplexity on a token shard.

    gpt-eval --checkpoint runs/tiny/checkpoints --shots 0,1,4 --output results.json
    gpt-eval --hf-dir gpt2-dir --tasks configs/eval/capitals.jsonl --decontamination dedup/decontam/stats.json
    gpt-eval --checkpoint runs/tiny/checkpoints --perplexity tests/data/tokens/wiki_gpt2_text_document

Multiple-choice tasks are scored by the log-likelihood of each answer (`acc`), per answer
token (`acc_norm`, GPT-3's), per character (`acc_norm_chars`, lm-evaluation-harness's) and,
where the task declares it, relative to the answer's likelihood after "Answer:"
(`acc_unconditional`); completion tasks by whether greedy decoding (or `--beams N` beam
search) reproduces the target (`acc`), the target's perplexity, and where declared by the
exact match, F1 (SQuAD) or BLEU (sacrebleu) of a generated answer (tools/eval_metrics.py).
With `--decontamination`, each task is also scored on its clean and its dirty examples.
Fine-tuning tasks (classification, entailment, similarity, and a multiple-choice task the
checkpoint was fine-tuned on) are scored by the head of a checkpoint written by `gpt-finetune`.
Task format: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from common.errors import UserError
from common.files import write_json
from data_pipeline.indexed import exists as shard_exists, read_tokens
from data_pipeline.tokenizers import Tokenizer
from tools.eval_decontamination import decontamination_status, describe_decontamination, read_decontamination
from tools.eval_metrics import METRIC_DEFINITIONS, Answer, ExampleScores, task_metrics
from tools.eval_tasks import ANSWER_PREFIX, GENERATIVE_METRICS, LANGUAGE_MODEL_KINDS, Task, find_tasks
from training.generation import Beams, Sampling, beam_search, forward, generate, left_pad
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


def score_task(model: GPT, tokenizer: Tokenizer, task: Task, shots: int, seed: int,
               batch_size: int = 8, beams: Beams | None = None) -> list[ExampleScores]:
    """Per example: every answer's log-likelihood (and, if the task's metrics need them, its likelihood
    after the answer context, whether decoding reproduces it, and the generated answer).

    With `beams`, completion tasks decode by beam search, else greedily."""
    if task.kind not in LANGUAGE_MODEL_KINDS:
        raise UserError(f"task {task.name} is a {task.kind} task: score it with a checkpoint from gpt-finetune")
    contexts = [tokenizer.encode(task.prompt(index, shots, seed)) for index in range(len(task.examples))]
    requests = [(context, tokenizer.encode(ANSWER_PREFIX + answer))
                for context, example in zip(contexts, task.examples) for answer in task.answers(example)]
    scores = score(model, requests, batch_size, progress=f"{task.name} {shots}-shot")
    answers = iter([Answer(logprob, len(continuation), len(text), greedy)
                    for (logprob, greedy), (_, continuation), text in zip(scores, requests, answer_texts(task))])
    examples = [ExampleScores([next(answers) for _ in task.answers(e)], e.get("label", 0),
                              task.references(e) if task.kind == "completion" else [])
                for e in task.examples]
    if "acc_unconditional" in task.metrics:
        answer_context = tokenizer.encode(task.declaration.answer_context)
        unconditional = iter(score(model, [(answer_context, continuation) for _, continuation in requests],
                                   batch_size))
        for example in examples:
            for answer in example.answers:
                answer.unconditional = next(unconditional)[0]
    if task.kind == "completion" and beams is not None and "acc" in task.metrics:
        seq = model.cfg.seq_length
        for (context, target), example in zip(requests, examples):
            found = beam_search(model, [context[-(seq - len(target)):]], len(target), beams, eod_id=tokenizer.eod_id)
            example.answers[0].reproduced = found[0] == target
    if set(task.metrics) & set(GENERATIVE_METRICS):
        for example, text in zip(examples, generate_answers(model, tokenizer, task, contexts, batch_size, beams)):
            example.generated = text
    return examples


def answer_texts(task: Task) -> list[str]:
    return [answer for example in task.examples for answer in task.answers(example)]


def generate_answers(model: GPT, tokenizer: Tokenizer, task: Task, contexts: list[list[int]], batch_size: int,
                     beams: Beams | None) -> list[str]:
    """Each context's answer: decoded greedily (or by beam search) up to the task's stop string or
    `max_new_tokens`, stripped of surrounding whitespace."""
    limit, stop = task.declaration.max_new_tokens, task.declaration.stop
    room = model.cfg.seq_length - limit
    if room < 1:
        raise UserError(f"task {task.name}: max_new_tokens {limit} leaves no room for a prompt in a "
                        f"{model.cfg.seq_length}-token model")
    answers = []
    for start in range(0, len(contexts), batch_size):
        prompts = [context[-room:] for context in contexts[start:start + batch_size]]
        if beams is None:
            new = generate(model, prompts, limit, Sampling(greedy=True), eod_id=tokenizer.eod_id,
                           stop=lambda tokens: stop in tokenizer.decode(tokens))
        else:
            new = beam_search(model, prompts, limit, beams, eod_id=tokenizer.eod_id)
        answers += [tokenizer.decode([t for t in tokens if t != tokenizer.eod_id]).split(stop)[0].strip()
                    for tokens in new]
    return answers


def evaluate_task(model: GPT, tokenizer: Tokenizer, task: Task, shots: int, seed: int,
                  batch_size: int = 8, beams: Beams | None = None) -> dict:
    """The task's metrics with `shots` in-context examples (drawn reproducibly from `seed`)."""
    return task_result(task, shots, score_task(model, tokenizer, task, shots, seed, batch_size, beams), beams)


def subset_metrics(task: Task, examples: list[ExampleScores], indices: Sequence[int]) -> dict[str, float]:
    return task_metrics(task.kind, task.metrics, [examples[i] for i in indices])


def task_result(task: Task, shots: int, examples: list[ExampleScores], beams: Beams | None) -> dict:
    result = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(task.examples),
              **task_metrics(task.kind, task.metrics, examples)}
    decodes = "acc" in task.metrics or set(task.metrics) & set(GENERATIVE_METRICS)
    if beams is not None and task.kind == "completion" and decodes:
        result["beams"] = beams.width
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


# --------------------------------------------------------------------------- command


TABLE_METRICS = ("acc", "acc_norm", "acc_norm_chars", "acc_unconditional", "exact_match", "f1", "bleu")


def print_table(results: list[dict]) -> None:
    """One row per task and shot count; a column per metric any row has (keys as in the JSON)."""
    from rich.console import Console
    from rich.table import Table

    metrics = [m for m in TABLE_METRICS if any(m in r for r in results)]
    table = Table(title="gpt-eval")
    for column in ("task", "kind", "shots", "examples", *metrics, "ppl", "decontamination"):
        table.add_column(column)
    for r in results:
        ppl = r.get("ppl", r.get("target_ppl"))
        table.add_row(r["task"], r["kind"], str(r.get("shots", "")), str(r.get("examples", r.get("tokens", ""))),
                      *[f"{r[m]:.3f}" if m in r else "" for m in metrics], f"{ppl:.2f}" if ppl is not None else "",
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
                             "with these tasks as --benchmarks: per task what was found, and the scores on all, "
                             "clean and dirty examples")
    parser.add_argument("--beams", type=int, default=0,
                        help="completion tasks: acc and generated answers by beam search with N beams (GPT-3: 4; "
                             "default: greedy decoding)")
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
            result = evaluate_finetuned(loaded, task, args.batch_size)
            results.append(dict(result, decontamination=decontamination_status(task, report)))
            continue
        for k in shots:
            examples = score_task(loaded.model, loaded.tokenizer, task, k, args.seed, args.batch_size, beams)
            metrics_of = partial(subset_metrics, task, examples)
            results.append(dict(task_result(task, k, examples, beams),
                                decontamination=decontamination_status(task, report, metrics_of)))
    results += [perplexity(loaded.model, prefix, args.max_tokens, args.batch_size) for prefix in args.perplexity]
    print_table(results)
    if args.output:
        used = {name: METRIC_DEFINITIONS[name] for name in METRIC_DEFINITIONS if any(name in r for r in results)}
        write_json(args.output, {"seed": args.seed, "metrics": used, "results": results})
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
