"""`gpt-finetune`: GPT-1's supervised fine-tuning (Radford et al. 2018, section 3.2), on the trainer's engine.

    gpt-finetune --checkpoint runs/tiny/checkpoints --task my_task.jsonl --output runs/my_task
    torchrun --nproc-per-node 2 -m tools.finetune --hf-dir gpt2-dir --task my_task.jsonl --output runs/my_task
    torchrun --nproc-per-node 8 -m tools.finetune --checkpoint runs/big/checkpoints --tp 2 --pp 2 \\
        --task t.jsonl --output o --set precision=bf16 parallel.activation_checkpointing=true

Inputs become one token sequence with start, delimiter and extract tokens (three unused
rows of the padded vocabulary): classification ``<s> text <e>``, entailment
``<s> premise <d> hypothesis <e>``, similarity both orders ``<s> a <d> b <e>`` and
``<s> b <d> a <e>`` (their final states summed), multiple choice ``<s> context <d> answer <e>``
per answer (softmax over the answers). A linear head reads the final state of the
extract token; the loss adds the language-modelling loss on the same tokens with weight
0.5. Trains on `<name>.train.jsonl` and reports accuracy on `<name>.jsonl`.

The training runs in pretraining's loop and engine (training/loop.py, training/parallel.py):
any TP x PP x ZeRO-DP layout, precision and activation checkpointing (`--set` takes any key
of the run config), the same checkpoints (with the head inside; a rerun resumes), metrics
and TensorBoard, stop signals and the bad-step guard. The head lives on the last stage.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from common.errors import UserError
from data_pipeline.tokenizers import Tokenizer
from tools.eval_tasks import Task, load_task
from tools.finetune_batches import IGNORED, FinetuneLoss, lm_targets, micro_batch, sequences
from tools.task_head import HEAD_PREFIX, INFO_KEY, FinetuneInfo, TaskHead, task_scores
from training import checkpoint, loop
from training.config import Config, load_config
from training.distributed import Layout
from training.parallel import GPTWithStates, MicroBatch, ParallelEngine
from training.progress import Progress

FINETUNE_KINDS = ("classification", "entailment", "similarity", "multiple_choice")


def num_labels(task: Task) -> int:
    if task.kind == "multiple_choice":
        return 1
    return max(e["label"] for e in (task.train or []) + task.examples) + 1


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """GPT-1: linear warmup, then linear decay to zero (a multiple of the peak learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def check_task(task: Task, batch_size: int) -> int:
    """The steps per epoch of a task gpt-finetune can train."""
    if task.kind not in FINETUNE_KINDS:
        raise UserError(f"task {task.name} is a {task.kind} task; gpt-finetune trains "
                        f"{', '.join(FINETUNE_KINDS)} tasks")
    if not task.train:
        raise UserError(f"task {task.name} has no training split ({task.name}.train.jsonl next to {task.path})")
    if task.kind == "multiple_choice" and len({len(e["choices"]) for e in task.train + task.examples}) != 1:
        raise UserError("multiple-choice fine-tuning needs the same number of answers in every example")
    steps_per_epoch = len(task.train) // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {batch_size} is larger than the {len(task.train)} training examples")
    return steps_per_epoch


class Finetuning:
    """The training loop's recipe for GPT-1's fine-tuning: the task's examples, epoch by epoch, at a linear schedule.

    Sample i of the run is example `order[epoch][i % per_epoch]` (each epoch shuffled by the seed, the
    last incomplete batch dropped), the same whatever the layout; each data-parallel rank takes its
    contiguous slice of a global batch, in micro-batches of `train.micro_batch_size` examples. Every
    sequence is padded to the longest of the task (fixed shapes, as pipeline stages need)."""

    name = "finetune"

    def __init__(self, task: Task, info: FinetuneInfo, tokenizer: Tokenizer, loss: FinetuneLoss, cfg: Config,
                 layout: Layout, warmup: float):
        self.task, self.info, self.loss, self.cfg, self.layout = task, info, loss, cfg, layout
        self.train_examples = [sequences(info, tokenizer, e) for e in task.train]
        self.test_examples = [sequences(info, tokenizer, e) for e in task.examples]
        self.seq_length = max(len(s) for example in self.train_examples + self.test_examples for s in example)
        self.per_epoch = len(task.train) // cfg.train.global_batch_size * cfg.train.global_batch_size
        self.warmup_steps = max(1, math.ceil(warmup * cfg.train.steps))
        self.orders: dict[int, list[int]] = {}  # epoch -> its order of the training examples
        self.test_acc = float("nan")

    def start(self, progress: Progress) -> None:
        """Nothing to prepare: the examples are in memory and indexed by the samples consumed."""

    def batch_size(self, progress: Progress) -> int:
        return self.cfg.train.global_batch_size

    def learning_rate(self, progress: Progress, batch: int) -> float:
        return self.cfg.train.lr * linear_schedule(progress.step, self.cfg.train.steps, self.warmup_steps)

    def example_index(self, sample: int) -> int:
        epoch, position = divmod(sample, self.per_epoch)
        if epoch not in self.orders:
            self.orders[epoch] = list(range(len(self.task.train)))
            random.Random(f"{self.cfg.train.seed}/{epoch}").shuffle(self.orders[epoch])
        return self.orders[epoch][position]

    def micro_batches(self, progress: Progress, batch: int) -> list[MicroBatch]:
        chosen = [self.example_index(i) for i in range(progress.consumed, progress.consumed + batch)]
        targets = sum(lm_targets(s, self.info) for i in chosen for s in self.train_examples[i])
        lm_scale = batch / self.cfg.train.micro_batch_size / max(targets, 1)
        return self._share([self.train_examples[i] for i in chosen], [self.task.train[i]["label"] for i in chosen],
                           lm_scale)

    def _share(self, encoded: list, labels: list[int], lm_scale: float) -> list[MicroBatch]:
        """This data-parallel rank's contiguous slice of a batch, in micro-batches."""
        per_rank, size = len(encoded) // self.layout.dp, self.cfg.train.micro_batch_size
        first = self.layout.dp_rank * per_rank
        return [micro_batch(encoded[i:i + size], labels[i:i + size], self.seq_length, self.info, lm_scale)
                for i in range(first, first + per_rank, size)]

    def step_metrics(self) -> dict:
        task_loss, lm_loss, _, _, micro_batches = self.loss.take_records(self.layout.device).tolist()
        return {"task_loss": task_loss / micro_batches, "lm_loss": lm_loss / micro_batches}

    def evaluate(self, engine: ParallelEngine) -> dict:
        """Accuracy on the task's scored examples (the last batch filled up with ignored examples)."""
        examples, labels = list(self.test_examples), [e["label"] for e in self.task.examples]
        multiple = self.layout.dp * self.cfg.train.micro_batch_size
        fill = -len(examples) % multiple
        examples += [examples[0]] * fill
        labels += [IGNORED] * fill
        self.loss.take_records(self.layout.device)  # (nothing is pending after a step's metrics)
        engine.eval_loss(self._share(examples, labels, lm_scale=0.0))
        _, _, correct, scored, _ = self.loss.take_records(self.layout.device).tolist()
        self.test_acc = correct / scored if scored else float("nan")
        return {"test_acc": self.test_acc, "test_examples": len(self.task.examples)}


# --------------------------------------------------------------------------- the run


def base_manifest(args: argparse.Namespace, workdir: str) -> dict:
    """The checkpoint to start from, verified, as weights only (a pretraining run's optimizer and step are not ours)."""
    from tools.convert import from_hf
    from training.checkpoint_files import verified_manifest

    source = args.checkpoint
    if args.hf_dir is not None:
        if not (Path(args.hf_dir) / "config.json").is_file():
            raise UserError(f"not a Hugging Face model directory (no config.json): {args.hf_dir}")
        source = from_hf(args.hf_dir, workdir, tp=1, pp=1)
    return dict(verified_manifest(source), optimizer=False, trainer=None)


def run_config(args: argparse.Namespace, base: dict, task: Task, world: int) -> Config:
    """The trainer's config: the base model, the layout and any `--set` keys, GPT-1's recipe from the flags."""
    from training.checkpoint_files import vocab_multiple_for
    from training.config import check_layout, check_values
    from training.consolidated import checkpoint_config

    cfg = load_config(None, args.set)
    cfg.model = checkpoint_config(base).model
    cfg.parallel.tp, cfg.parallel.pp = args.tp or cfg.parallel.tp, args.pp or cfg.parallel.pp
    cfg.model.make_vocab_size_divisible_by = vocab_multiple_for(base, cfg.parallel.tp)  # keep the base's padding
    check_values(cfg)
    if world % (cfg.parallel.tp * cfg.parallel.pp):
        raise UserError(f"TP {cfg.parallel.tp} x PP {cfg.parallel.pp} does not divide the {world} processes")
    dp = world // (cfg.parallel.tp * cfg.parallel.pp)
    if args.batch_size % dp:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {dp} data-parallel ranks")
    t = cfg.train
    t.global_batch_size, t.micro_batch_size = args.batch_size, args.micro_batch_size or args.batch_size // dp
    t.steps = args.epochs * check_task(task, args.batch_size)
    t.lr, t.weight_decay, t.seed = args.lr, args.weight_decay, args.seed
    t.adam_beta2, t.grad_clip = 0.999, 0.0  # Adam's defaults, no clipping (GPT-1)
    cfg.checkpoint.dir = args.output
    check_layout(cfg, world)
    return cfg


def special_tokens(cfg: Config) -> tuple[int, int, int]:
    """Start, delimiter and extract ids: rows of the padded vocabulary no tokenizer emits."""
    vocab, padded = cfg.model.vocab_size, cfg.model.padded_vocab_size(cfg.parallel.tp)
    if padded < vocab + 3:
        raise UserError(f"the padded vocabulary ({padded}) has no room for start, "
                        f"delimiter and extract tokens after the {vocab} real ones")
    return vocab, vocab + 1, vocab + 2


def finetune(cfg: Config, task: Task, tokenizer: Tokenizer, args: argparse.Namespace, base: dict) -> dict:
    """Train on the engine in the trainer's loop; returns the summary (the losses on rank 0, which writes it)."""
    from training.distributed import resolve_device

    if parallel_state.model_parallel_is_initialized():  # a caller's single-process groups: now the run's layout
        parallel_state.destroy_model_parallel()
    layout = loop.start_processes(cfg)
    if resolve_device(args.device).type != layout.device.type:
        raise UserError(f"--device {args.device}: gpt-finetune trains where the trainer does, on "
                        f"{layout.device.type} here (each rank its own GPU when there are GPUs)")
    info = FinetuneInfo(task.name, task.kind, num_labels(task), *special_tokens(cfg),
                        max_length=min(args.max_length or cfg.model.seq_length, cfg.model.seq_length))
    with torch.random.fork_rng(devices=[]):  # the head's initialisation, the same on every rank and layout
        torch.manual_seed(cfg.train.seed)
        head = TaskHead(cfg.model.d_model, info.num_labels, args.head_dropout)
    loss = FinetuneLoss(head, task.kind, args.lm_weight)
    output = Path(args.output)
    resume_from = checkpoint.find_resume_point(cfg, output) or base
    checkpoint.fit_config(cfg, resume_from)
    recipe = Finetuning(task, info, tokenizer, loss, cfg, layout, args.warmup)
    engine = loop.build_engine(cfg, layout, cfg.train.global_batch_size, resume_from, loss=loss)
    if layout.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        print(f"[finetune] {task.name}: {layout.describe()}, {cfg.train.steps} steps", flush=True)
    progress = loop.train(engine, recipe, cfg, layout, output, resume_from, {INFO_KEY: asdict(info)}, HEAD_PREFIX)
    metrics = output / "metrics.jsonl"  # none yet when a stop came during start-up
    records = [json.loads(line) for line in metrics.read_text().splitlines()] \
        if layout.rank == 0 and metrics.exists() else []
    steps = [r for r in records if "loss" in r]
    summary = {"task": task.name, "kind": task.kind, "steps": progress.step, "test_examples": len(task.examples),
               "test_acc": recipe.test_acc}
    if steps:
        summary.update(first_loss=steps[0]["loss"], final_loss=steps[-1]["loss"])
    return summary


def evaluate_finetuned(loaded, task: Task, batch_size: int = 8) -> dict:
    """Accuracy of a gpt-finetune checkpoint's head on a task's scored examples (gpt-eval's hook), in one process."""
    info = loaded.info
    if task.kind != info.kind:
        raise UserError(f"the checkpoint was fine-tuned for a {info.kind} task ({info.task}); "
                        f"task {task.name} is {task.kind}")
    model, head = loaded.model.eval(), loaded.head.eval()
    device = model.token_embedding.weight.device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(task.examples), batch_size):
            chosen = task.examples[start:start + batch_size]
            encoded = [sequences(info, loaded.tokenizer, e) for e in chosen]
            width = max(len(s) for example in encoded for s in example)
            tokens, (_, _, extract, labels) = micro_batch(encoded, [e["label"] for e in chosen], width, info, 0.0)
            _, states = GPTWithStates.forward(model, tokens.to(device))  # a GPT's layers, the final states kept
            scores = task_scores(head, info.kind, states[torch.arange(len(tokens), device=device), extract.to(device)],
                                 len(chosen))
            correct += int((scores.argmax(-1).cpu() == labels).sum())
    return {"task": task.name, "kind": task.kind, "shots": "fine-tuned", "examples": len(task.examples),
            "acc": correct / len(task.examples)}


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    from tools.model_source import add_model_args

    parser = argparse.ArgumentParser(prog="gpt-finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--task", required=True,
                        help="task file <name>.jsonl (scored) with <name>.train.jsonl next to it (trained on)")
    parser.add_argument("--output", required=True,
                        help="run directory: the checkpoints (a rerun resumes from them), metrics.jsonl, summary.json")
    parser.add_argument("--epochs", type=int, default=3, help="GPT-1: 3 (default %(default)s)")
    parser.add_argument("--lr", type=float, default=6.25e-5, help="peak learning rate (GPT-1: 6.25e-5)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step over all ranks (GPT-1: 32)")
    parser.add_argument("--micro-batch-size", type=int, default=0,
                        help="examples per micro-batch (default: the batch over the data-parallel ranks)")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="weight of the auxiliary LM loss (GPT-1: 0.5)")
    parser.add_argument("--warmup", type=float, default=0.002, help="fraction of steps warming up (GPT-1: 0.2%%)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="on matrices (GPT-1: 0.01)")
    parser.add_argument("--max-length", type=int, default=0, help="tokens per input sequence (0: model context)")
    parser.add_argument("--head-dropout", type=float, default=0.1, help="dropout before the task head (GPT-1: 0.1)")
    parser.add_argument("--tp", type=int, help="tensor-parallel ranks (default: parallel.tp, 1); "
                                                "the processes left over by TP x PP are data-parallel")
    parser.add_argument("--pp", type=int, help="pipeline stages (default: parallel.pp, 1); the head is on the last")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="run config keys as in training.pretrain, e.g. precision=bf16 parallel.zero_stage=2 "
                             "logging.tensorboard=false checkpoint.interval=100")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("tp", "pp"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.micro_batch_size < 0:
        raise UserError("--micro-batch-size must be at least 1 (or 0: the batch over the data-parallel ranks)")
    if not 0 <= args.head_dropout < 1:
        raise UserError("--head-dropout must be in [0, 1)")


def run(args: argparse.Namespace) -> dict:
    from data_pipeline.tokenizers import load_tokenizer
    from training.distributed import world_from_environment

    check_flags(args)
    task = load_task(args.task)
    world = world_from_environment()[1]
    with tempfile.TemporaryDirectory(prefix="gpt-hf-") as workdir:
        base = base_manifest(args, workdir)
        cfg = run_config(args, base, task, world)
        summary = finetune(cfg, task, load_tokenizer(args.tokenizer), args, base)
    if dist.get_rank() == 0:
        (Path(args.output) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accuracy = "not evaluated yet" if math.isnan(summary["test_acc"]) else f"{summary['test_acc']:.3f}"
        print(f"gpt-finetune: {task.name}: loss {summary.get('first_loss', float('nan')):.4f} -> "
              f"{summary.get('final_loss', float('nan')):.4f} over {summary['steps']} steps, test accuracy "
              f"{accuracy} on {len(task.examples)} examples; checkpoint in {args.output}", file=sys.stderr)
    return summary


def main(argv=None) -> int:
    from training.distributed import shutdown
    from training.faults import catch_stop_signals

    catch_stop_signals()  # before the start-up's minutes: a stop asked for during them ends the run cleanly
    args = build_parser().parse_args(argv)
    started_here = not dist.is_initialized()  # else a caller's (a test's, a notebook's) groups: they stay
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
