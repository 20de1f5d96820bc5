"""GPT-1's fine-tuning inputs and loss on the trainer's engine (Radford et al. 2018, section 3.2-3.3).

`sequences` is GPT-1's input transformation; `micro_batch` packs examples into the engine's
(tokens, labels) micro-batch; `FinetuneLoss` is the engine's loss on the last pipeline stage:
the task head on the extract tokens' final states plus the weighted language-modelling loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel

from data_pipeline.tokenizers import Tokenizer
from tools.task_head import FinetuneInfo, TaskHead, task_scores
from training.parallel import HeadLoss, MicroBatch

IGNORED = -1  # the label of a filler example (evaluation pads the last batch with them)


def sequences(info: FinetuneInfo, tokenizer: Tokenizer, example: dict) -> list[list[int]]:
    """GPT-1's input transformation: the token sequences whose extract states make one prediction."""
    s, d, e = info.start_id, info.delimiter_id, info.extract_id
    budget = info.max_length - 3

    def pair(first: str, second: str) -> list[int]:
        a, b = tokenizer.encode(first), tokenizer.encode(second)
        keep_b = min(len(b), budget // 2 if len(a) > budget // 2 else budget - len(a))
        a = a[: budget - keep_b]
        return [s, *a, d, *b[:keep_b], e]

    if info.kind == "classification":
        return [[s, *tokenizer.encode(example["text"])[: info.max_length - 2], e]]
    if info.kind == "entailment":
        return [pair(example["premise"], example["hypothesis"])]
    if info.kind == "similarity":
        return [pair(example["text_a"], example["text_b"]), pair(example["text_b"], example["text_a"])]
    return [pair(example["context"], answer) for answer in example["choices"]]


def lm_targets(sequence: list[int], info: FinetuneInfo) -> int:
    """Next-token targets of the LM loss in a sequence: every token after the first but the special ones."""
    return sum(token < info.start_id for token in sequence[1:])


def micro_batch(encoded: list[list[list[int]]], labels: list[int], width: int, info: FinetuneInfo,
                lm_scale: float) -> MicroBatch:
    """(tokens [rows, width], (LM targets, LM weights [rows, width], extract positions [rows], labels [examples])).

    Rows are the examples' sequences in order, right-padded to `width` (attention is causal: no
    real token sees the padding). Each LM target weighs `lm_scale`, so that the engine's mean over
    micro-batches and data-parallel ranks of the weighted sums is the mean over the global batch's
    targets, whatever its share of them each micro-batch holds."""
    rows = [sequence for example in encoded for sequence in example]
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    for row, sequence in enumerate(rows):
        tokens[row, : len(sequence)] = torch.tensor(sequence)
    lengths = torch.tensor([len(sequence) for sequence in rows])
    targets = torch.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    real = (torch.arange(width)[None] < (lengths - 1)[:, None]) & (targets < info.start_id)
    targets[~real] = 0  # padding and special tokens: no target (any id would do at weight 0)
    return tokens, (targets, real.float() * lm_scale, lengths - 1, torch.tensor(labels))


class FinetuneLoss(HeadLoss):
    """Task cross-entropy (over the answers' scores for multiple choice) + `lm_weight` x LM loss.

    Keeps each micro-batch's (task loss, LM loss, correct, examples) for `take_records`: the
    metrics of a step and the accuracy of an evaluation."""

    def __init__(self, head: TaskHead, kind: str, lm_weight: float):
        super().__init__()
        self.head = head
        self.kind = kind
        self.lm_weight = lm_weight
        self.records: list[torch.Tensor] = []

    def forward(self, outputs, labels) -> torch.Tensor:
        logits, states = outputs
        targets, weights, extract, classes = labels
        lm_loss = (tensor_parallel.vocab_parallel_cross_entropy(logits.float(), targets) * weights).sum()
        rows = torch.arange(states.shape[0], device=states.device)
        scores = task_scores(self.head, self.kind, states[rows, extract], len(classes)).float()
        scored = classes != IGNORED
        task_loss = F.cross_entropy(scores, classes, ignore_index=IGNORED, reduction="sum") / scored.sum().clamp(min=1)
        correct = ((scores.argmax(-1) == classes) & scored).sum()
        self.records.append(torch.stack([task_loss.detach(), lm_loss.detach(), correct.float(),
                                         scored.sum().float(), torch.ones_like(lm_loss)]))
        return task_loss + self.lm_weight * lm_loss

    def take_records(self, device: torch.device) -> torch.Tensor:
        """Sums over every rank of (task loss, LM loss, correct, examples, micro-batches) recorded since the
        last call (collective over the world: ranks without the loss, earlier pipeline stages, add zeros)."""
        total = torch.stack(self.records).sum(0).to(device) if self.records else torch.zeros(5, device=device)
        self.records = []
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return total
