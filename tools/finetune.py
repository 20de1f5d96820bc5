"""`gpt-finetune`: GPT-1's supervised fine-tuning (Radford et al. 2018, section 3.2).

    gpt-finetune --checkpoint runs/tiny/checkpoints --task my_task.jsonl --output runs/my_task
    torchrun --nproc-per-node 2 -m tools.finetune --hf-dir gpt2-dir --task my_task.jsonl --output runs/my_task
    torchrun --nproc-per-node 4 -m tools.finetune --checkpoint runs/big/checkpoints --tp 2 --task t.jsonl --output o

Inputs become one token sequence with start, delimiter and extract tokens (three unused
rows of the padded vocabulary): classification ``<s> text <e>``, entailment
``<s> premise <d> hypothesis <e>``, similarity both orders ``<s> a <d> b <e>`` and
``<s> b <d> a <e>`` (their final states summed), multiple choice ``<s> context <d> answer <e>``
per answer (softmax over the answers). A linear head reads the final state of the
extract token; the loss adds the language-modelling loss on the same tokens with weight
0.5. Trains on `<name>.train.jsonl` and reports accuracy on `<name>.jsonl`; data-parallel
under torchrun/srun with the trainer's process groups, and tensor-parallel with `--tp N`
(the trunk's megatron-core layers at TP = N, the head replicated).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from torch import nn
from tqdm import tqdm

from common.errors import UserError
from data_pipeline.tokenizers import Tokenizer
from tools.eval_tasks import Task, load_task
from tools.task_head import HEAD_FILE, INFO_KEY, FinetuneInfo, TaskHead
from training.config import Config
from training.model import GPT
from training.rng import seed_everything

FINETUNE_KINDS = ("classification", "entailment", "similarity", "multiple_choice")


def special_tokens(model: GPT) -> tuple[int, int, int]:
    """Start, delimiter and extract ids: rows of the padded vocabulary no tokenizer emits."""
    vocab = model.cfg.vocab_size
    padded = model.cfg.padded_vocab_size(parallel_state.get_tensor_model_parallel_world_size())
    if padded < vocab + 3:
        raise UserError(f"the padded vocabulary ({padded}) has no room for start, "
                        f"delimiter and extract tokens after the {vocab} real ones")
    return vocab, vocab + 1, vocab + 2


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


class FinalStates:
    """Captures the model's final (normalised) hidden states on every forward pass."""

    def __init__(self, model: GPT):
        self.value: torch.Tensor | None = None
        model.final_norm.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = output


def batch_forward(model: nn.Module, states: FinalStates, head: nn.Module, info: FinetuneInfo, tokenizer: Tokenizer,
                  examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(task logits [examples, classes or answers], summed LM loss, number of LM targets) for a batch.

    The LM loss is a sum so that the caller can average it over the tokens of the whole global
    batch, whatever share of them this data-parallel rank holds. Sequences are right-padded:
    attention is causal, so no real token sees the padding."""
    per_example = [sequences(info, tokenizer, e) for e in examples]
    flat = [seq for seqs in per_example for seq in seqs]
    width = max(len(seq) for seq in flat)
    device = next(head.parameters()).device
    tokens = torch.zeros((len(flat), width), dtype=torch.long)
    for row, seq in enumerate(flat):
        tokens[row, : len(seq)] = torch.tensor(seq)
    lengths = torch.tensor([len(seq) for seq in flat])
    tokens = tokens.to(device)
    logits = model(tokens)  # vocab-parallel [rows, width, padded_vocab / TP]; `states` keeps the final states
    lm_losses = tensor_parallel.vocab_parallel_cross_entropy(logits[:, :-1].float().contiguous(), tokens[:, 1:])
    # targets: the real tokens, less the special ones (padded vocabulary rows from start_id on, out of the softmax)
    real = (torch.arange(width - 1)[None] < (lengths - 1)[:, None]).to(device) & (tokens[:, 1:] < info.start_id)
    extract_states = states.value[torch.arange(len(flat), device=device), (lengths - 1).to(device)]
    return task_logits(head, info, extract_states, examples), (lm_losses * real).sum(), real.sum()


def task_logits(head: nn.Module, info: FinetuneInfo, states: torch.Tensor, examples: list[dict]) -> torch.Tensor:
    if info.kind == "similarity":
        return head(states[0::2] + states[1::2])
    if info.kind == "multiple_choice":
        counts = [len(e["choices"]) for e in examples]
        if len(set(counts)) != 1:
            raise UserError("multiple-choice fine-tuning needs the same number of answers in every example")
        return head(states).view(len(examples), counts[0])
    return head(states)


# --------------------------------------------------------------------------- training


def num_labels(task: Task) -> int:
    if task.kind == "multiple_choice":
        return 1
    labels = [e["label"] for e in (task.train or []) + task.examples]
    return max(labels) + 1


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """GPT-1: linear warmup, then linear decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def data_parallel() -> tuple[int, int]:
    return parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum over the data-parallel group (without gradient: it only feeds normalisers and logs)."""
    value = value.detach().float().clone()
    if data_parallel()[0] > 1:
        dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return value


def mean_over_ranks(value: torch.Tensor) -> float:
    return float(sum_over_ranks(value)) / data_parallel()[0]


@torch.no_grad()
def predict(model: nn.Module, states: FinalStates, head: nn.Module, info: FinetuneInfo, tokenizer: Tokenizer,
            examples: list[dict], batch_size: int) -> list[int]:
    model.eval()
    head.eval()
    picks = []
    for start in range(0, len(examples), batch_size):
        logits, _, _ = batch_forward(model, states, head, info, tokenizer, examples[start:start + batch_size])
        picks += logits.argmax(-1).tolist()
    return picks


def accuracy(picks: list[int], examples: list[dict]) -> float:
    return sum(p == e["label"] for p, e in zip(picks, examples)) / len(examples)


def finetune(model: GPT, tokenizer: Tokenizer, task: Task, *, epochs: int = 3, lr: float = 6.25e-5,
             batch_size: int = 32, lm_weight: float = 0.5, warmup: float = 0.002, weight_decay: float = 0.01,
             max_length: int = 0, head_dropout: float = 0.1,
             seed: int = 1234) -> tuple[TaskHead, FinetuneInfo, list[dict]]:
    """Train `model` (in place) and a new head on the task's train split; returns (head, info, per-step log).

    Each data-parallel rank takes every dp-th example of a global batch; gradients are averaged.
    Losses are means over the global batch (the LM loss over all its tokens), so any number of
    data- or tensor-parallel ranks takes the same steps as one process."""
    if task.kind not in FINETUNE_KINDS:
        raise UserError(f"task {task.name} is a {task.kind} task; gpt-finetune trains "
                        f"{', '.join(FINETUNE_KINDS)} tasks")
    if not task.train:
        raise UserError(f"task {task.name} has no training split ({task.name}.train.jsonl next to {task.path})")
    dp, dp_rank = data_parallel()
    if batch_size % dp:
        raise UserError(f"--batch-size {batch_size} is not divisible by the {dp} data-parallel ranks")
    steps_per_epoch = len(task.train) // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {batch_size} is larger than the {len(task.train)} training examples")
    info = FinetuneInfo(task.name, task.kind, num_labels(task), *special_tokens(model),
                        max_length=min(max_length or model.cfg.seq_length, model.cfg.seq_length))
    torch.manual_seed(seed)
    device = model.token_embedding.weight.device
    head = TaskHead(model.cfg.d_model, info.num_labels, head_dropout).to(device)  # the same on every rank
    # dropout: one stream per data-parallel rank, shared by its TP group, plus a TP-local one for sharded heads
    seed_everything(seed, 0, dp_rank, parallel_state.get_tensor_model_parallel_rank(), device)
    states = FinalStates(model)
    trunk = model
    if dp > 1:
        trunk = nn.parallel.DistributedDataParallel(model, process_group=parallel_state.get_data_parallel_group())
        head = nn.parallel.DistributedDataParallel(head, process_group=parallel_state.get_data_parallel_group())
    params = list(trunk.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=lr)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, total, max(1, math.ceil(warmup * total))))
    history, step = [], 0
    progress = tqdm(total=total, desc=f"finetune {task.name}", disable=dist.get_rank() != 0)
    for epoch in range(epochs):
        order = list(range(len(task.train)))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        for batch_start in range(0, steps_per_epoch * batch_size, batch_size):
            mine = [task.train[i] for i in order[batch_start:batch_start + batch_size]][dp_rank::dp]
            trunk.train()
            head.train()
            logits, lm_sum, lm_targets = batch_forward(trunk, states, head, info, tokenizer, mine)
            labels = torch.tensor([e["label"] for e in mine], device=device)
            task_loss = F.cross_entropy(logits, labels)  # every rank holds batch_size / dp examples
            lm_loss = lm_sum * dp / sum_over_ranks(lm_targets)  # DDP's mean over ranks makes it the global mean
            loss = task_loss + lm_weight * lm_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": mean_over_ranks(loss), "task_loss": mean_over_ranks(task_loss),
                      "lm_loss": mean_over_ranks(lm_loss), "lr": optimizer.param_groups[0]["lr"]}
            history.append(record)
            progress.update()
            progress.set_postfix(loss=f"{record['loss']:.4f}")
    progress.close()
    head = head.module if isinstance(head, nn.parallel.DistributedDataParallel) else head
    return head, info, history


# --------------------------------------------------------------------------- checkpoint


def load_trunk(hf_dir: str | None, checkpoint: str | None, tp: int) -> GPT:
    """The model to fine-tune: whole in every process at TP = 1, else this rank's tensor-parallel shards."""
    from tools.convert import from_hf
    from tools.model_source import load_model

    if tp == 1:
        return load_model(hf_dir, checkpoint)
    if hf_dir is None:
        return load_shards(checkpoint)
    with tempfile.TemporaryDirectory(prefix="gpt-hf-") as converted:
        return load_shards(from_hf(hf_dir, converted, tp=tp, pp=1))


def load_shards(checkpoint: str | Path) -> GPT:
    """This rank's slice of any checkpoint (any TP/PP layout) in a GPT built at the current TP size.

    `load_gpt` builds one whole model per process; a tensor-parallel trunk needs every rank to
    hold only its own shards, re-cut from whatever TP the checkpoint was saved at."""
    from training.checkpoint_files import CheckpointError, ShardReader, vocab_multiple_for
    from training.checkpoint_files import verified_manifest
    from training.consolidated import checkpoint_config

    tp, tp_rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    manifest = verified_manifest(checkpoint)
    cfg = checkpoint_config(manifest)
    if cfg.model.n_heads % tp:
        raise UserError(f"--tp {tp} does not divide the model's {cfg.model.n_heads} attention heads")
    cfg.model.make_vocab_size_divisible_by = vocab_multiple_for(manifest, tp)  # keep the checkpoint's padding
    model = GPT(cfg.model, cfg.train.seed)
    reader = ShardReader(manifest)
    with torch.no_grad():
        for name, param in model.named_parameters():
            shard = reader.shard(name, tp, tp_rank)
            if shard.shape != param.shape:
                raise CheckpointError(f"checkpoint {manifest['path']}: {name} gives a TP={tp} shard of shape "
                                      f"{list(shard.shape)}, the model's is {list(param.shape)}")
            param.copy_(shard)
    return model


def full_weights(model: GPT) -> dict[str, torch.Tensor]:
    """Whole tensors on every rank: TP shards gathered along the dimension megatron-core split them."""
    from training.checkpoint import partition_dim

    tp = parallel_state.get_tensor_model_parallel_world_size()
    state = {}
    for name, param in model.named_parameters():
        value, dim = param.detach(), partition_dim(param)
        if tp > 1 and dim is not None:
            parts = [torch.empty_like(value) for _ in range(tp)]
            dist.all_gather(parts, value.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            value = torch.cat(parts, dim=dim)
        state[name] = value.cpu()
    return state


def save(directory: Path, weights: dict[str, torch.Tensor], model: GPT, head: TaskHead, info: FinetuneInfo) -> None:
    """A weights-only TP = PP = 1 checkpoint of the trunk (`full_weights`) with the head and what gpt-eval needs.

    Written with `write_weights` rather than gpt-convert's `write_layout`: that one asks a
    single-process model for the partition dimensions, which a tensor-parallel process cannot build."""
    from training.checkpoint import partition_dim
    from training.checkpoint_files import write_weights

    padded = model.cfg.padded_vocab_size(parallel_state.get_tensor_model_parallel_world_size())
    cfg = Config(model=copy.deepcopy(model.cfg))
    cfg.model.make_vocab_size_divisible_by = padded
    dims = {name: partition_dim(param) for name, param in model.named_parameters()}
    write_weights(directory, weights, dims, cfg.to_dict(), 1, 1, dict.fromkeys(weights, 0), padded,
                  extra_files={HEAD_FILE: head.state_dict()}, extra={INFO_KEY: asdict(info)})


def evaluate_finetuned(loaded, task: Task, batch_size: int = 8) -> dict:
    """Accuracy of a gpt-finetune checkpoint's head on a task's scored examples (gpt-eval's hook)."""
    info = loaded.info
    if task.kind != info.kind:
        raise UserError(f"the checkpoint was fine-tuned for a {info.kind} task ({info.task}); "
                        f"task {task.name} is {task.kind}")
    states = FinalStates(loaded.model)
    picks = predict(loaded.model, states, loaded.head, info, loaded.tokenizer, task.examples, batch_size)
    return {"task": task.name, "kind": task.kind, "shots": "fine-tuned", "examples": len(task.examples),
            "acc": accuracy(picks, task.examples)}


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    from tools.model_source import add_model_args

    parser = argparse.ArgumentParser(prog="gpt-finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--task", required=True,
                        help="task file <name>.jsonl (scored) with <name>.train.jsonl next to it (trained on)")
    parser.add_argument("--output", required=True, help="directory for the fine-tuned checkpoint and metrics")
    parser.add_argument("--epochs", type=int, default=3, help="GPT-1: 3 (default %(default)s)")
    parser.add_argument("--lr", type=float, default=6.25e-5, help="peak learning rate (GPT-1: 6.25e-5)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step over all ranks (GPT-1: 32)")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="weight of the auxiliary LM loss (GPT-1: 0.5)")
    parser.add_argument("--warmup", type=float, default=0.002, help="fraction of steps warming up (GPT-1: 0.2%%)")
    parser.add_argument("--max-length", type=int, default=0, help="tokens per input sequence (0: model context)")
    parser.add_argument("--head-dropout", type=float, default=0.1, help="dropout before the task head (GPT-1: 0.1)")
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor-parallel ranks for the trunk (must divide the processes and the heads); "
                             "the rest of the processes are data-parallel (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def start_process_groups(tp: int) -> None:
    """The trainer's groups: TP = `tp` (PP = 1), data parallel over the remaining processes."""
    from training.distributed import init_distributed, world_from_environment

    if parallel_state.model_parallel_is_initialized():  # e.g. a test or notebook set them up
        if parallel_state.get_tensor_model_parallel_world_size() != tp:
            raise UserError(f"--tp {tp}, but this process already runs at TP="
                            f"{parallel_state.get_tensor_model_parallel_world_size()}")
        return
    world = world_from_environment()[1]
    if world % tp:
        raise UserError(f"--tp {tp} does not divide the {world} processes")
    init_distributed(tp=tp, pp=1)


def run(args: argparse.Namespace) -> dict:
    from data_pipeline.tokenizers import load_tokenizer
    from training.checkpoint_files import refuse_existing
    from training.distributed import resolve_device

    for name in ("epochs", "batch_size", "tp"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.head_dropout < 1:
        raise UserError("--head-dropout must be in [0, 1)")
    task = load_task(args.task)
    refuse_existing(Path(args.output))  # before the work, not after it
    start_process_groups(args.tp)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))  # each rank its own GPU
    model = load_trunk(args.hf_dir, args.checkpoint, args.tp).to(device)
    tokenizer = load_tokenizer(args.tokenizer)
    head, info, history = finetune(model, tokenizer, task, epochs=args.epochs, lr=args.lr,
                                   batch_size=args.batch_size, lm_weight=args.lm_weight, warmup=args.warmup,
                                   max_length=args.max_length, head_dropout=args.head_dropout, seed=args.seed)
    states = FinalStates(model)
    test_acc = accuracy(predict(model, states, head, info, tokenizer, task.examples, args.batch_size), task.examples)
    summary = {"task": task.name, "kind": task.kind, "steps": len(history), "first_loss": history[0]["loss"],
               "final_loss": history[-1]["loss"], "test_examples": len(task.examples), "test_acc": test_acc}
    weights = full_weights(model)  # collective over the TP group
    if dist.get_rank() == 0:
        output = Path(args.output)
        save(output, weights, model, head, info)
        with open(output / "metrics.jsonl", "w") as log:
            log.writelines(json.dumps(r) + "\n" for r in history)
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"gpt-finetune: {task.name}: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} "
              f"over {len(history)} steps, test accuracy {test_acc:.3f} on {len(task.examples)} examples; "
              f"checkpoint in {output}", file=sys.stderr)
    return summary


def main(argv=None) -> int:
    from training.distributed import shutdown

    args = build_parser().parse_args(argv)
    started_here = not dist.is_initialized()
    try:
        run(args)
    except UserError as err:
        print(f"gpt-finetune: error: {err}", file=sys.stderr)
        return 2
    finally:
        if started_here:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
