"""Clean and dirty scores (GPT-3 section 4) from the report of `gpt-data decontaminate`.

The report's `benchmarks[<task>]` names the task's examples found in the training data
(`contaminated_example_ids`, 0-based in the task file's order) and the n-gram size used; a
task is then scored on all examples, on the clean ones and on the dirty ones.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import UserError
from tools.eval_tasks import Task

SubsetMetrics = Callable[[Sequence[int]], dict[str, float]]  # example indices -> the task's metrics on them


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


def decontamination_status(task: Task, report: dict | None, metrics_of: SubsetMetrics | None = None) -> dict:
    """Whether this task's examples were checked against the training data, what was found, and with
    `metrics_of` the task's metrics on its clean and dirty examples."""
    entry = None if report is None else report.get(task.name)
    if entry is None:
        return {"checked": False}
    status = {"checked": True, "contaminated_examples": entry["contaminated_examples"],
              "documents_touched": entry["documents"], "documents_dropped": entry["documents_dropped"]}
    if "ngram" in entry:
        status["ngram"] = entry["ngram"]
    if entry["examples"] != len(task.examples):
        status["note"] = (f"the report covers {entry['examples']} examples, the task has {len(task.examples)}: "
                          "it was checked in another version")
    ids = entry.get("contaminated_example_ids")
    if metrics_of is None:  # a fine-tuned head's scores are not kept per example
        return status
    if ids is None:
        status["split"] = "unavailable: the report lists no contaminated_example_ids (an older gpt-data decontaminate)"
    elif "note" in status:
        status["split"] = "unavailable: the report is of another version of the task"
    else:
        status.update(split_scores(task, ids, metrics_of))
    return status


def split_scores(task: Task, dirty_ids: Sequence[int], metrics_of: SubsetMetrics) -> dict:
    """The metrics on the clean and on the dirty examples, and clean minus all."""
    count = len(task.examples)
    if any(not isinstance(i, int) or not 0 <= i < count for i in dirty_ids):
        raise UserError(f"decontamination report: contaminated_example_ids of {task.name} must be indices "
                        f"below {count}")
    dirty = sorted(set(dirty_ids))
    clean = sorted(set(range(count)) - set(dirty))
    whole, clean_metrics = metrics_of(range(count)), metrics_of(clean)
    return {"all": {"examples": count, **whole},
            "clean": {"examples": len(clean), **clean_metrics},
            "dirty": {"examples": len(dirty), **metrics_of(dirty)},
            "clean_minus_all": {name: clean_metrics[name] - whole[name] for name in clean_metrics}}


def describe_decontamination(status: dict) -> str:
    """The table's cell: what was found and, with the split, clean minus all of the first metric."""
    if not status["checked"]:
        return "not checked"
    ngram = f" ({status['ngram']}-grams)" if "ngram" in status else ""
    text = f"checked{ngram}: {status['contaminated_examples']} found"
    if "note" in status:
        return text + " (other version)"
    if status.get("clean_minus_all"):
        name, delta = next(iter(status["clean_minus_all"].items()))
        text += f", clean-all {name} {delta:+.3f}"
    return text
