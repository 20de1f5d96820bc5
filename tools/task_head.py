"""A fine-tuned task head and its record: written by `gpt-finetune`, read by every tool that loads a checkpoint.

Its own module so that `tools.model_source` (where the tools get a model) need not import the
fine-tuning command."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.model import GPT

HEAD_FILE = "head.pt"  # inside the checkpoint, listed and verified with its files
INFO_KEY = "finetune"  # the manifest's FinetuneInfo
LEGACY_INFO_FILE = "finetune.json"  # gpt-finetune once wrote it and HEAD_FILE next to `latest`


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


def load_head(checkpoint: Path, model: GPT) -> tuple[TaskHead | None, FinetuneInfo | None]:
    """The task head of a fine-tuned checkpoint, if any, verified like its other files."""
    from training.checkpoint_files import CheckpointError, check_files, load_plain, read_manifest

    manifest = read_manifest(checkpoint)
    legacy = Path(checkpoint) / LEGACY_INFO_FILE
    if INFO_KEY in manifest:
        root, record = Path(manifest["path"]), manifest[INFO_KEY]
        problems = check_files(manifest, [HEAD_FILE])
        if problems:
            raise CheckpointError(problems[0])
    elif legacy.is_file():
        root, record = legacy.parent, json.loads(legacy.read_text())
    else:
        return None, None
    state = load_plain(root / HEAD_FILE, f"fine-tuned head {root / HEAD_FILE}")
    try:
        info = FinetuneInfo(**record)
        head = TaskHead(model.cfg.d_model, info.num_labels)
        head.load_state_dict(state)
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"the fine-tuned head in {root} does not fit ({' '.join(str(err).split())})") from None
    return head.to(model.token_embedding.weight.device).eval(), info
