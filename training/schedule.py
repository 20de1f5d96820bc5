"""GPT-3's schedules, both measured in tokens seen (Brown et al. 2020, Appendix B).

Learning rate: linear warmup, then cosine decay to `min_lr_ratio` x peak at
`decay_tokens` (counted from the start, warmup included), then constant.
Batch size: linear ramp from a small batch to the full one over `rampup_tokens`.
"""
from __future__ import annotations

import math

from training.config import TrainConfig


def learning_rate(tokens: int, train: TrainConfig) -> float:
    if train.warmup_tokens and tokens < train.warmup_tokens:
        return train.lr * tokens / train.warmup_tokens
    min_lr = train.lr * train.min_lr_ratio
    span = max(train.decay_tokens - train.warmup_tokens, 1)
    progress = min(max(tokens - train.warmup_tokens, 0) / span, 1.0)
    return min_lr + (train.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_size(tokens: int, train: TrainConfig) -> int:
    """Global batch (sequences) for the step that starts after `tokens` tokens."""
    start, increment = train.rampup_start_batch_size, train.rampup_batch_increment
    if not start or start >= train.global_batch_size:
        return train.global_batch_size
    increments = math.ceil((train.global_batch_size - start) / increment)
    tokens_per_increment = train.rampup_tokens / increments
    return min(start + int(tokens // tokens_per_increment) * increment, train.global_batch_size)
