"""`python -m training.torchrun`: torchrun for the trainer, with a pre-flight check and a clean stop.

    python -m training.torchrun --nproc-per-node 8 -m training.pretrain --config configs/tiny/gpt3_tiny.yaml \\
        --run-dir runs/tiny --set parallel.tp=2 parallel.pp=2

The arguments are torchrun's, unchanged. What differs from calling torchrun itself:

- The trainer's checks (config, layout for this world size, data files) run once, here,
  before any rank starts: a mistake is one line and exit 2, not one line per node followed
  by torchrun's 30-line ChildFailedError. The GPU memory check stays with the ranks unless
  `parallel.device_memory_gb` is set (a launcher must not take a GPU).
- SIGTERM or SIGUSR1 sent to this process goes to the ranks, which finish their step, save
  and exit 0; this process then exits with torchrun's status, 0. torchrun, signalled itself,
  SIGKILLs ranks still saving after its shutdown timeout (30 s) and exits 1 with a
  SignalException traceback; SIGUSR1 kills it outright.

Ctrl-C reaches torchrun directly (same process group) and aborts the run at once, as before.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from common.errors import UserError
from training.faults import STOP_SIGNALS

TRAINER = "training.pretrain"


def preflight(argv: list[str]) -> None:
    """Run the trainer's own pre-start checks for the world size these torchrun arguments give.

    Skipped for another program and for elastic launches (`--nnodes MIN:MAX`: no fixed world)."""
    from torch.distributed.run import determine_local_world_size, get_args_parser, parse_min_max_nnodes

    launch = get_args_parser().parse_args(argv)  # torchrun's own parser: its usage errors stay its own
    min_nodes, max_nodes = parse_min_max_nnodes(launch.nnodes)
    if not (launch.module and launch.training_script == TRAINER) or min_nodes != max_nodes:
        return
    from training.pretrain import parse_args, prepare

    world = max_nodes * determine_local_world_size(launch.nproc_per_node)
    prepare(parse_args(launch.training_script_args), world, gpu_memory=False)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's ranks), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        preflight(argv)
    except UserError as err:
        print(f"training.torchrun: error: {err}", file=sys.stderr)
        return 2
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv])

    def forward(signum: int, _frame) -> None:
        ranks = child_pids(torchrun.pid)
        # Before the ranks exist there is nothing to save: torchrun ends the launch on SIGTERM.
        for pid, sig in [(pid, signum) for pid in ranks] or [(torchrun.pid, signal.SIGTERM)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    signal.signal(signal.SIGINT, lambda *_: None)  # torchrun gets Ctrl-C itself and aborts; wait for it
    status = torchrun.wait()
    return 128 - status if status < 0 else status  # killed by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main())
