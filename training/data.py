"""Training data: megatron-core's GPTDataset over the sources of a blend JSON.

The blend (written by `gpt-data mixture`) names Megatron `.bin/.idx` prefixes with
weights; megatron-core's BlendedMegatronDatasetBuilder turns them into train and
validation datasets of fixed-length samples. Sample `i` of the run is the same
sample whatever the parallel layout: each step takes the next `batch` samples and
data-parallel rank r takes the r-th contiguous slice of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from data_pipeline.blend import Blend, load_blend
from common.errors import UserError
from training.config import Config, ConfigError


@dataclass(frozen=True)
class TokenizerInfo:
    """What megatron-core's GPTDataset asks of a tokenizer."""
    eod: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict:  # part of megatron-core's index-cache key
        return {"eod": self.eod, "vocab_size": self.vocab_size}


def read_blend(path: str) -> Blend:
    try:
        return load_blend(path)
    except UserError as err:
        raise ConfigError(f"data.blend: {err}") from None


def build_datasets(cfg: Config, blend: Blend, train_samples: int, valid_samples: int, cache_dir: str):
    """(train, valid) datasets; call on every rank (the index cache makes repeats cheap)."""
    config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.model.seq_length,
        blend=blend.megatron_blend(),
        split=cfg.data.split,
        path_to_cache=cache_dir,
        tokenizer=TokenizerInfo(eod=blend.tokenizer["eod_id"], vocab_size=blend.tokenizer["vocab_size"]),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, config
    ).build()
    return train, valid


def micro_batches(dataset, first_sample: int, batch_size: int, dp: int, dp_rank: int,
                  micro_batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This data-parallel rank's micro-batches of the global batch starting at `first_sample`."""
    per_rank = batch_size // dp
    start = first_sample + dp_rank * per_rank
    batches = []
    for offset in range(start, start + per_rank, micro_batch_size):
        samples = [dataset[i] for i in range(offset, offset + micro_batch_size)]
        batches.append((torch.stack([s["tokens"] for s in samples]),
                        torch.stack([s["labels"] for s in samples])))
    return batches
