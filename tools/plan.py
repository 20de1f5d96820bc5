"""`gpt-plan`: rank the 3D-parallel layouts of a model on a cluster by estimated step time.

Every candidate (TP, PP, DP, micro-batch, ZeRO stage, activation checkpointing) is first
checked with the trainer's own config validation, then against the trainer's memory model
(`training.memory`), then timed with `tools.plan_cost`. The best layout is printed as the
`--set` overrides that make `training.pretrain` (and the Slurm scripts) use it.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import asdict, dataclass

from data_pipeline.tokenizers import GPT2_VOCAB_SIZE
from training.config import Config, ConfigError, check_layout, check_values, load_config
from training.memory import DEFAULT_RESERVE_GB, GIB, Layout, MemoryEstimate, check_stages, estimate_memory
from tools.plan_cost import Cluster, StepCost, step_cost

MAX_MICRO_BATCH = 16


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    memory: MemoryEstimate
    fits: bool
    cost: StepCost | None  # only for layouts that fit


def with_layout(config: Config, layout: Layout) -> Config:
    """A copy of `config` that selects `layout` (validated like a `--set` override would be)."""
    config = copy.deepcopy(config)
    config.parallel.tp, config.parallel.pp = layout.tp, layout.pp
    config.parallel.zero_stage = layout.zero_stage
    config.parallel.activation_checkpointing = layout.activation_checkpointing
    config.train.micro_batch_size = layout.micro_batch_size
    check_values(config)
    check_layout(config, layout.world_size)
    check_stages(config)
    return config


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(config: Config, world_size: int, max_tp: int) -> list[Layout]:
    """All layouts of `world_size` GPUs that the trainer accepts for this config."""
    found = []
    for tp in _divisors(world_size):
        if tp > max_tp:
            continue
        for pp in _divisors(world_size // tp):
            dp = world_size // (tp * pp)
            for micro_batch in _divisors(config.train.global_batch_size // dp or 1):
                if micro_batch > MAX_MICRO_BATCH:
                    continue
                for zero in (1, 2, 3) if pp == 1 else (1,):
                    for checkpointing in (False, True):
                        layout = Layout(tp, pp, dp, micro_batch, zero, checkpointing)
                        try:
                            with_layout(config, layout)
                        except ConfigError:
                            continue
                        found.append(layout)
    return found


def plan(config: Config, cluster: Cluster, reserve_gb: float = DEFAULT_RESERVE_GB) -> list[Candidate]:
    """Every accepted layout with its memory; fitting ones timed and ranked first, fastest first."""
    if not config.model.vocab_size:
        config = copy.deepcopy(config)
        config.model.vocab_size = GPT2_VOCAB_SIZE  # vocab_size 0 takes the tokenizer's: size for GPT-2's
    budget = (cluster.gpu_memory_gb - reserve_gb) * GIB
    candidates = []
    for layout in layouts(config, cluster.world_size, max_tp=cluster.gpus_per_node):
        laid_out = with_layout(config, layout)
        memory = estimate_memory(laid_out, layout)
        fits = memory.peak <= budget
        candidates.append(Candidate(layout, memory, fits, step_cost(laid_out, layout, cluster) if fits else None))
    return sorted(candidates, key=lambda c: (not c.fits, c.cost.step_s if c.fits else c.memory.peak))


def _table(config: Config, candidates: list[Candidate], title: str):
    from rich.table import Table

    table = Table(title=title)
    for column in ("#", "TP", "PP", "DP", "mbs", "GA", "ZeRO", "ckpt", "params", "grads", "optim",
                   "activ", "buffers", "peak GiB", "bubble", "comm GB tp/pp/dp", "step s", "TFLOP/s", "MFU"):
        table.add_column(column, justify="right")
    for rank, c in enumerate(candidates, 1):
        lay, mem = c.layout, c.memory.breakdown_gib()
        row = [str(rank), str(lay.tp), str(lay.pp), str(lay.dp), str(lay.micro_batch_size),
               str(lay.grad_accumulation(config.train.global_batch_size)), str(lay.zero_stage),
               "yes" if lay.activation_checkpointing else "no"]
        row += [f"{mem[k]:.1f}" for k in ("parameters", "gradients", "optimizer", "activations")]
        row += [f"{mem['pipeline_buffers'] + mem['reduce_bucket']:.1f}", f"{mem['peak']:.1f}"]
        if c.cost:
            k = c.cost
            row += [f"{k.bubble_fraction:.1%}", f"{k.tp_bytes / 1e9:.0f}/{k.pp_bytes / 1e9:.1f}/{k.dp_bytes / 1e9:.1f}",
                    f"{k.step_s:.2f}", f"{k.tflops_per_gpu:.0f}", f"{k.mfu:.1%}"]
        else:
            row += ["-", "-", "does not fit", "-", "-"]
        table.add_row(*row)
    return table


def build_parser() -> argparse.ArgumentParser:
    defaults = Cluster()
    parser = argparse.ArgumentParser(
        prog="gpt-plan",
        description="Rank TP x PP x DP layouts (with micro-batch, ZeRO stage and activation "
        "checkpointing) of a model config on a GPU cluster by per-GPU memory and estimated step "
        "time. GPU figures are model estimates, not measurements.",
    )
    parser.add_argument("--config", required=True, help="trainer YAML config, e.g. configs/gpt3/175b.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, as for training.pretrain")
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node)
    parser.add_argument("--gpu-memory-gb", type=float, default=defaults.gpu_memory_gb, help="GiB per GPU")
    parser.add_argument("--peak-tflops", type=float, default=defaults.peak_tflops,
                        help="dense 16-bit peak per GPU (A100: 312, H100 SXM: 989)")
    parser.add_argument("--intra-node-gbps", type=float, default=defaults.intra_node_gbps,
                        help="all-reduce bus bandwidth inside a node, GB/s per GPU")
    parser.add_argument("--inter-node-gbps", type=float, default=defaults.inter_node_gbps,
                        help="network bandwidth between nodes, GB/s per GPU")
    parser.add_argument("--hbm-gbps", type=float, default=defaults.hbm_gbps, help="GPU memory bandwidth, GB/s")
    parser.add_argument("--compute-efficiency", type=float, default=defaults.compute_efficiency,
                        help="fraction of peak the GEMMs reach (default calibrated on Megatron-LM)")
    parser.add_argument("--reserve-gb", type=float, default=DEFAULT_RESERVE_GB,
                        help="GiB per GPU kept for CUDA context, NCCL and fragmentation")
    parser.add_argument("--top", type=int, default=10, help="rows of fitting layouts to show")
    parser.add_argument("--show-rejected", type=int, default=3, metavar="N",
                        help="also show the N smallest layouts that do not fit")
    parser.add_argument("--json", metavar="FILE", help="write every candidate as JSON to FILE")
    return parser


def check_cluster(args: argparse.Namespace) -> None:
    """The cluster figures must describe a cluster: zero GPUs or memory planned nothing and blamed the config."""
    for flag in ("nodes", "gpus_per_node", "gpu_memory_gb", "peak_tflops", "intra_node_gbps", "inter_node_gbps",
                 "hbm_gbps", "compute_efficiency"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag):g}")
    if args.compute_efficiency > 1:
        raise ConfigError(f"--compute-efficiency is a fraction of peak, at most 1, got {args.compute_efficiency:g}")
    if not 0 <= args.reserve_gb < args.gpu_memory_gb:
        raise ConfigError(f"--reserve-gb must be at least 0 and below --gpu-memory-gb {args.gpu_memory_gb:g}, "
                          f"got {args.reserve_gb:g}")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        check_cluster(args)
        config = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"gpt-plan: error: {err}", file=sys.stderr)
        return 2
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gb, args.peak_tflops,
                      args.intra_node_gbps, args.inter_node_gbps, args.hbm_gbps, args.compute_efficiency)
    candidates = plan(config, cluster, args.reserve_gb)
    fitting = [c for c in candidates if c.fits]
    rejected = [c for c in candidates if not c.fits]
    m = config.model
    console.print(
        f"{args.config}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
        f"{m.num_parameters() / 1e9:.2f}B parameters, global batch {config.train.global_batch_size} x "
        f"{m.seq_length}, {config.precision}; {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs of "
        f"{cluster.gpu_memory_gb:g} GiB ({args.reserve_gb:g} reserved)"
    )
    console.print(f"{len(candidates)} layouts accepted by the config, {len(fitting)} fit, {len(rejected)} do not")
    if fitting:
        console.print(_table(config, fitting[: args.top], "Layouts that fit, fastest first (estimates)"))
    if rejected and args.show_rejected:
        console.print(_table(config, rejected[: args.show_rejected], "Smallest layouts that do not fit"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([{"layout": asdict(c.layout), "fits": c.fits, "memory_gib": c.memory.breakdown_gib(),
                        "cost": asdict(c.cost) if c.cost else None} for c in candidates], out, indent=1)
    if not fitting:
        print("gpt-plan: error: no layout fits; add GPUs or memory, or lower train.global_batch_size",
              file=sys.stderr)
        return 1
    best = fitting[0]
    console.print(f"best: estimated {best.cost.step_s:.2f} s/step, {best.cost.tflops_per_gpu:.0f} TFLOP/s per GPU, "
                  f"MFU {best.cost.mfu:.1%}, peak {best.memory.peak / GIB:.1f} GiB per GPU")
    print("--set " + " ".join(best.layout.overrides()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
