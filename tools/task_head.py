"""A fine-tuned task head and its record: written by `gpt-finetune`, read by every tool that loads a checkpoint.

Its own module so that `tools.model_source` (where the tools get a model) need not import the
fine-tuning command."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from training.model import GPT

HEAD_PREFIX = "loss_fn.head."  # the head's parameters in a checkpoint (the engine's loss module holds it)
INFO_KEY = "finetune"  # the manifest's FinetuneInfo
HEAD_FILE = "head.pt"  # earlier outputs: the head in a file of the (weights-only) checkpoint
LEGACY_INFO_FILE = "finetune.json"  # before that: it and HEAD_FILE next to `latest`


@dataclass
class FinetuneInfo:
    """What `gpt-eval` needs besides the weights: the task kind, the labels and the special tokens."""

    task: str
    kind: str
    num_labels: int
    start_id: int
    delimiter_id: int
    extract_id: int
    max_length: int


class TaskHead(nn.Module):
    """Dropout and a linear layer on the extract token's final state (one score per answer for multiple choice)."""

    def __init__(self, d_model: int, outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_model, outputs)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(state))


def task_scores(head: TaskHead, kind: str, extract_states: torch.Tensor, examples: int) -> torch.Tensor:
    """[examples, classes or answers] from the extract tokens' final states, in `sequences` order (GPT-1):
    similarity sums the states of both orders, multiple choice scores each answer."""
    if kind == "similarity":
        return head(extract_states[0::2] + extract_states[1::2])
    if kind == "multiple_choice":
        return head(extract_states).view(examples, -1)
    return head(extract_states)


def head_parameters(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict | None, Path]:
    """(the head's tensors under their checkpoint names `loss_fn.head.*`, its FinetuneInfo record, where they were
    read) from any of gpt-finetune's output formats, verified like the checkpoint's other files; ({}, None, _) for a
    checkpoint that is not fine-tuned. One reader for the tools that load a head and those that rewrite one."""
    from training.checkpoint_files import CheckpointError, ShardReader, check_files, load_plain, read_manifest

    manifest = read_manifest(checkpoint)
    legacy = Path(checkpoint) / LEGACY_INFO_FILE
    root = Path(manifest["path"])
    if INFO_KEY in manifest and HEAD_FILE not in manifest["files"]:
        reader = ShardReader(manifest)
        return ({name: reader.full(name) for name in reader.names() if name.startswith(HEAD_PREFIX)},
                checked_record(manifest[INFO_KEY], root), root)
    if INFO_KEY in manifest:
        record = checked_record(manifest[INFO_KEY], root)
        problems = check_files(manifest, [HEAD_FILE])
        if problems:
            raise CheckpointError(problems[0])
    elif legacy.is_file():
        try:
            root, record = legacy.parent, checked_record(json.loads(legacy.read_text()), legacy)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{legacy} is not JSON ({err})") from None
    else:
        return {}, None, root
    state = load_plain(root / HEAD_FILE, f"fine-tuned head {root / HEAD_FILE}")
    return {HEAD_PREFIX + name: tensor for name, tensor in state.items()}, record, root


def checked_record(record, where: Path) -> dict:
    """`record` if it is a complete FinetuneInfo of the right types (the tools read its keys), else a CheckpointError."""
    from training.checkpoint_files import CheckpointError

    types = {"str": str, "int": int}
    if not isinstance(record, dict) or set(record) != {f.name for f in fields(FinetuneInfo)} or not all(
            type(record[f.name]) is types[f.type] for f in fields(FinetuneInfo)):
        raise CheckpointError(f"the fine-tuned task record in {where} is malformed: expected "
                              f"{{{', '.join(f'{f.name}: {f.type}' for f in fields(FinetuneInfo))}}}, found "
                              f"{json.dumps(record)[:200]}")
    return record


def load_head(checkpoint: Path, model: GPT) -> tuple[TaskHead | None, FinetuneInfo | None]:
    """The task head of a fine-tuned checkpoint, if any, verified like its other files."""
    from training.checkpoint_files import CheckpointError

    state, record, root = head_parameters(checkpoint)
    if record is None:
        return None, None
    try:
        info = FinetuneInfo(**record)
        head = TaskHead(model.cfg.d_model, info.num_labels)
        head.load_state_dict({name[len(HEAD_PREFIX):]: tensor for name, tensor in state.items()})
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"the fine-tuned head in {root} does not fit ({' '.join(str(err).split())})") from None
    return head.to(model.token_embedding.weight.device).eval(), info
