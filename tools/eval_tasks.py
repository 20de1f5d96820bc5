"""Evaluation tasks: JSONL files, their kinds, and GPT-3's few-shot prompt format.

A task is `<name>.jsonl` (the examples scored) with an optional `<name>.train.jsonl`
(the pool in-context examples are drawn from; without it they come from the other
scored examples, as GPT-3 did for tasks without a training set). The fields of the
first example decide the kind (see docs/evaluation.md):

- multiple choice: ``{"context", "choices": [...], "label": index}``
- completion (LAMBADA-style): ``{"context", "target"}``; `target` may list several gold answers
  (SQuAD-style), the first of which is the one shown in prompts and scored by `acc`/`target_ppl`
- classification ``{"text", "label"}``, entailment ``{"premise", "hypothesis", "label"}``,
  similarity ``{"text_a", "text_b", "label"}``: fine-tuning tasks, scored by a fine-tuned head.

Prompt format (GPT-3): each in-context example is ``context + " " + answer``, examples are
separated by a blank line, and the scored example's context comes last; the continuation
scored is ``" " + answer``.

A task declares its metrics (and their options) in an optional `<name>.task.json`; without one,
its kind's defaults apply (DEFAULT_METRICS).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, UserError
from common.options import build

SHOT_SEPARATOR = "\n\n"
ANSWER_PREFIX = " "
BUILTIN_TASKS = Path(__file__).resolve().parents[1] / "configs" / "eval"
TRAIN_SUFFIX = ".train.jsonl"
DECLARATION_SUFFIX = ".task.json"
KINDS = {  # kind -> required fields
    "multiple_choice": ("context", "choices", "label"),
    "completion": ("context", "target"),
    "classification": ("text", "label"),
    "entailment": ("premise", "hypothesis", "label"),
    "similarity": ("text_a", "text_b", "label"),
}
LANGUAGE_MODEL_KINDS = ("multiple_choice", "completion")
METRICS = {  # kind -> metrics a task of that kind may declare (docs/evaluation.md)
    "multiple_choice": ("acc", "acc_norm", "acc_norm_chars", "acc_unconditional"),
    "completion": ("acc", "target_ppl", "exact_match", "f1", "bleu"),
}
DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm", "acc_norm_chars"), "completion": ("acc", "target_ppl")}
GENERATIVE_METRICS = ("exact_match", "f1", "bleu")


@dataclass(frozen=True)
class Declaration:
    """What `<name>.task.json` may set: the metrics, the unconditional normalisation's context (GPT-3 used
    "Answer:" or "A:", followed by the answer's leading space) and how generated answers end."""

    metrics: tuple[str, ...]
    answer_context: str = "Answer:"
    max_new_tokens: int = 32
    stop: str = "\n"


@dataclass
class Task:
    name: str
    kind: str
    path: Path
    examples: list[dict]
    train: list[dict] | None  # None: few-shot examples come from `examples`
    declaration: Declaration | None = None  # None: the kind's default metrics

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.declaration.metrics if self.declaration else DEFAULT_METRICS.get(self.kind, ())

    def answers(self, example: dict) -> list[str]:
        """The candidate answers (multiple choice) or the first target (completion)."""
        return example["choices"] if self.kind == "multiple_choice" else [self.references(example)[0]]

    def references(self, example: dict) -> list[str]:
        """A completion example's gold answers (one or several)."""
        target = example["target"]
        return target if isinstance(target, list) else [target]

    def gold(self, example: dict) -> str:
        return self.answers(example)[example["label"] if self.kind == "multiple_choice" else 0]

    def shots(self, index: int, k: int, seed: int) -> list[dict]:
        """K in-context examples for scored example `index`, drawn at random but reproducibly."""
        if k == 0:
            return []
        pool = self.train if self.train is not None else [e for i, e in enumerate(self.examples) if i != index]
        if len(pool) < k:
            raise UserError(f"task {self.name}: {k}-shot needs {k} examples to draw from, the pool has {len(pool)}")
        return random.Random(f"{seed}/{self.name}/{index}").sample(pool, k)

    def prompt(self, index: int, k: int, seed: int) -> str:
        """The context the model conditions on (without the scored continuation)."""
        shots = [e["context"] + ANSWER_PREFIX + self.gold(e) for e in self.shots(index, k, seed)]
        return SHOT_SEPARATOR.join(shots + [self.examples[index]["context"]])


def kind_of(example: dict, where: str) -> str:
    for kind, fields in KINDS.items():
        if all(f in example for f in fields):
            return kind
    kinds = "; ".join(f"{kind}: {'/'.join(fields)}" for kind, fields in KINDS.items())
    raise UserError(f"{where}: an example needs the fields of one task kind ({kinds}), got {sorted(example)}")


def read_jsonl(path: Path) -> list[dict]:
    examples = []
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{line_no}: not a JSON line ({err.msg})") from None
            if not isinstance(example, dict):
                raise UserError(f"{path}:{line_no}: an example must be a JSON object")
            examples.append(example)
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def check_example(task: Task, example: dict, where: str) -> None:
    if task.kind == "completion":
        target = example["target"]
        if not (isinstance(target, str) or (isinstance(target, list) and target
                                            and all(isinstance(t, str) for t in target))):
            raise UserError(f"{where}: target must be a string or a non-empty list of strings")
    if task.kind == "multiple_choice":
        choices = example["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: choices must be a non-empty list of non-empty strings")
    if "label" in KINDS[task.kind]:
        label, count = example["label"], len(example["choices"]) if task.kind == "multiple_choice" else None
        if not isinstance(label, int) or label < 0 or (count is not None and label >= count):
            raise UserError(f"{where}: label must be an index{f' below {count}' if count else ''}, got {label!r}")


def read_declaration(path: Path, kind: str) -> Declaration | None:
    """`<name>.task.json`: {"metrics": [...], and optionally "answer_context", "max_new_tokens", "stop"}."""
    if not path.exists():
        return None
    try:
        declaration = build(Declaration, json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err.msg})") from None
    except ConfigError as err:
        raise UserError(f"{path}: {err}") from None
    allowed = METRICS.get(kind, ())
    if not declaration.metrics or not set(declaration.metrics) <= set(allowed):
        raise UserError(f"{path}: metrics must be some of {', '.join(allowed)} for a {kind} task, "
                        f"got {list(declaration.metrics)}")
    if declaration.max_new_tokens < 1 or not declaration.stop:
        raise UserError(f"{path}: max_new_tokens must be at least 1 and stop a non-empty string")
    return declaration


def load_task(path: str | Path) -> Task:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    name = path.name.removesuffix(".jsonl")
    examples = read_jsonl(path)
    kind = kind_of(examples[0], f"{path}:1")
    train_path = path.with_name(name + TRAIN_SUFFIX)
    task = Task(name, kind, path, examples, read_jsonl(train_path) if train_path.exists() else None,
                read_declaration(path.with_name(name + DECLARATION_SUFFIX), kind))
    for source, rows in ((path, examples), (train_path, task.train or [])):
        for line, example in enumerate(rows, 1):
            if kind_of(example, f"{source}:{line}") != kind:
                raise UserError(f"{source}:{line}: example is not a {kind} example like the first one")
            check_example(task, example, f"{source}:{line}")
    return task


def find_tasks(spec: str | Path | None) -> list[Task]:
    """Tasks from a file, a directory of `<name>.jsonl` files, or comma-separated names of built-in tasks."""
    if spec is None:
        spec = BUILTIN_TASKS
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(TRAIN_SUFFIX))
        if not files:
            raise UserError(f"no task files (*.jsonl) in {path}")
        return [load_task(p) for p in files]
    if path.is_file():
        return [load_task(path)]
    tasks = []
    for name in str(spec).split(","):
        builtin = BUILTIN_TASKS / f"{name}.jsonl"
        if not builtin.is_file():
            known = ", ".join(p.name.removesuffix(".jsonl") for p in sorted(BUILTIN_TASKS.glob("*.jsonl"))
                              if not p.name.endswith(TRAIN_SUFFIX))
            raise UserError(f"no task file or built-in task named {name!r} (built-in: {known})")
        tasks.append(load_task(builtin))
    return tasks
