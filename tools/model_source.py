"""Where the tools get a model: `--hf-dir`, `--checkpoint` (ours, any layout, or from gpt-finetune).

Everything is loaded into one process (TP = 1); `tools.convert` does the conversion and
the consolidation. A `gpt-finetune` output directory also brings its task head.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from data_pipeline.errors import UserError
from data_pipeline.tokenizers import Tokenizer, load_tokenizer
from training.config import ModelConfig
from training.consolidated import ensure_single_process_groups, load_gpt
from training.model import GPT

TRUNK_FILE = "model.pt"


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    head: torch.nn.Module | None = None  # a fine-tuned task head
    info: object | None = None  # tools.finetune.FinetuneInfo of that head


def add_model_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", help="a Hugging Face GPT-2 directory (config.json + weights)")
    source.add_argument("--checkpoint", help="one of our checkpoints (any TP/PP/DP layout) or a gpt-finetune output")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="tokenizer spec: gpt2, gpt2:PATH.tiktoken or sentencepiece:PATH (default %(default)s)")


def save_trunk(model: GPT, directory: Path) -> None:
    """A consolidated single-process copy of the model (used by gpt-finetune's output)."""
    torch.save({"config": dataclasses.asdict(model.cfg), "model": model.state_dict()}, directory / TRUNK_FILE)


def load_trunk(directory: Path) -> GPT:
    saved = torch.load(directory / TRUNK_FILE, map_location="cpu", weights_only=True)
    model = GPT(ModelConfig(**saved["config"]), seed=0)
    model.load_state_dict(saved["model"])
    return model


def load_model(hf_dir: str | None = None, checkpoint: str | None = None) -> GPT:
    ensure_single_process_groups()
    if checkpoint is not None and (Path(checkpoint) / TRUNK_FILE).is_file():
        return load_trunk(Path(checkpoint)).eval()
    if hf_dir is not None:
        from tools import convert

        if not (Path(hf_dir) / "config.json").is_file():
            raise UserError(f"not a Hugging Face model directory (no config.json): {hf_dir}")
        return convert.load_hf_model(hf_dir).eval()
    return load_gpt(checkpoint)[0]


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    model = load_model(args.hf_dir, args.checkpoint)
    loaded = LoadedModel(model, load_tokenizer(args.tokenizer))
    if args.checkpoint is not None:
        from tools.finetune import load_head

        loaded.head, loaded.info = load_head(Path(args.checkpoint), model)
    return loaded
