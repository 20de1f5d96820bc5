"""Where the tools get a model: `--hf-dir`, `--checkpoint` (ours, any layout, or from gpt-finetune).

Everything is loaded into one process (TP = 1): `training.consolidated.load_gpt` reads any
layout, `tools.convert` converts Hugging Face GPT-2 and GPT-1. A `gpt-finetune` output directory
also brings its task head.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from data_pipeline.tokenizers import Tokenizer, load_tokenizer
from tools.convert import HF_FORMATS
from tools.task_head import FinetuneInfo, load_head
from training.config import Config
from training.consolidated import load_gpt
from training.distributed import default_device, resolve_device
from training.model import GPT


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    head: torch.nn.Module | None = None  # a fine-tuned task head
    info: FinetuneInfo | None = None  # what that head was trained for


def add_model_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", help=f"a Hugging Face GPT-2 or GPT-1 {HF_FORMATS}")
    source.add_argument("--checkpoint", help="one of our checkpoints (any TP/PP/DP layout) or a gpt-finetune output")
    parser.add_argument("--device", default=default_device(),
                        help="where the model runs: cpu, cuda or cuda:N (default: %(default)s, the GPU when there is one)")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="tokenizer spec: gpt2, gpt2:PATH.tiktoken, sentencepiece:PATH or byte-bpe:DIR "
                             "(default %(default)s)")


def save_trunk(model: GPT, directory: Path) -> Path:
    """Write `model` as one of our (weights-only, TP = PP = 1) checkpoints under `directory`."""
    from tools.convert import write_layout

    cfg = Config(model=copy.deepcopy(model.cfg))
    state = {name: p.detach().cpu() for name, p in model.named_parameters()}
    return write_layout(state, cfg, str(directory), 1, 1, model.cfg.padded_vocab_size(1))


def load_model(hf_dir: str | None = None, checkpoint: str | None = None,
               device: str | torch.device = "cpu") -> GPT:
    """A single-process model on `device`; a Hugging Face directory goes through `gpt-convert from-hf` first."""
    if hf_dir is not None:
        from tools.convert import from_hf

        if not (Path(hf_dir) / "config.json").is_file():
            raise UserError(f"not a Hugging Face model directory (no config.json): {hf_dir}")
        with tempfile.TemporaryDirectory(prefix="gpt-hf-") as converted:
            return load_gpt(from_hf(hf_dir, converted, tp=1, pp=1), device)[0]
    return load_gpt(checkpoint, device)[0]


def load_from_args(args: argparse.Namespace, tokenizer: Tokenizer | None = None) -> LoadedModel:
    """The model, tokenizer and task head the arguments name (`tokenizer`: one the caller loaded already)."""
    model = load_model(args.hf_dir, args.checkpoint, resolve_device(args.device))
    loaded = LoadedModel(model, tokenizer or load_tokenizer(args.tokenizer))
    if args.checkpoint is not None:
        loaded.head, loaded.info = load_head(Path(args.checkpoint), model)
    return loaded
