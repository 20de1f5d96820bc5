"""Pre-flight check for a launch: does this config's layout suit this world size (and GPU memory)?

Used by slurm/train_gpt.sh before srun starts any rank, so that a wrong allocation or a layout
that cannot fit fails in one line instead of after minutes of start-up.

    python -m tools.plan_check --config configs/gpt3/175b.yaml --world-size 1024 \
        --gpu-memory-gb 80 --set parallel.tp=8 parallel.pp=8
"""
from __future__ import annotations

import argparse
import copy
import sys

from training.config import ConfigError, load_config
from training.memory import DEFAULT_RESERVE_GB, GIB, check_fits, check_stages, layout_of
from data_pipeline.tokenizers import GPT2_VOCAB_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--world-size", type=int, required=True, help="number of ranks (GPUs) in the job")
    parser.add_argument("--gpu-memory-gb", type=float, help="GiB per GPU; omit to skip the memory check (CPU)")
    parser.add_argument("--reserve-gb", type=float, default=DEFAULT_RESERVE_GB)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        layout = layout_of(config, args.world_size)
        if not config.model.vocab_size:  # decided by the tokenizer; size the checks for GPT-2's
            config = copy.deepcopy(config)
            config.model.vocab_size = GPT2_VOCAB_SIZE
        check_stages(config)
        message = (f"layout ok: world {args.world_size} = TP {layout.tp} x PP {layout.pp} x DP {layout.dp}, "
                   f"micro-batch {layout.micro_batch_size} x {layout.grad_accumulation(config.train.global_batch_size)} "
                   f"accumulation steps, ZeRO {layout.zero_stage}")
        if args.gpu_memory_gb:
            estimate = check_fits(config, args.world_size, args.gpu_memory_gb, args.reserve_gb)
            message += f", estimated peak {estimate.peak / GIB:.1f} of {args.gpu_memory_gb:g} GiB per GPU"
    except ConfigError as err:
        print(f"plan_check: error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
