"""Process groups: one world from torchrun, srun or the deepspeed launcher; megatron-core's TP/PP/DP groups.

Megatron's rank order (TP fastest, then DP, then PP) is the order of DeepSpeed's
pipeline topology axes ['pipe', 'data', 'model'], so both libraries agree on which
ranks form each group.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from training.deepspeed_compat import skip_shm_comm_build


@dataclass(frozen=True)
class Layout:
    world: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device

    def describe(self) -> str:
        return f"world {self.world} = TP {self.tp} x PP {self.pp} x DP {self.dp} on {self.device.type}"


def world_from_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun/deepspeed (RANK...) or Slurm's srun (SLURM_PROCID...)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        return rank, world, local
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")  # plain `python -m training.pretrain`
    return 0, 1, 0


def start_default_group(backend: str, rank: int, world: int, timeout: datetime.timedelta) -> None:
    """torch.distributed's default group, at MASTER_ADDR:MASTER_PORT (a free port for one process).

    The address is passed, not exported: a process that starts trainers or tools of its own
    (tests, notebooks) must not hand them a port it already holds."""
    address = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT") or (_free_port() if world == 1 else 29500)
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                            timeout=timeout)


def process_group_backend(device_type: str) -> str:
    """The default group's backend: on GPUs NCCL for CUDA tensors *and* gloo for CPU ones.

    Control values (a stop flag, a Python object gathered for a checkpoint) are small CPU
    tensors in torch, DeepSpeed and megatron-core alike; with NCCL alone each of those
    collectives raises "No backend type associated with device type cpu". Every subgroup
    megatron-core and DeepSpeed create inherits both backends."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def default_device() -> str:
    """What the tools run on when not told: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`--device` as a torch device (`cuda` means this process's GPU); a device that is not there is a UserError."""
    from common.errors import UserError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible to this process")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this node has {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device


def init_distributed(tp: int, pp: int, timeout_minutes: float = 30) -> Layout:
    """Start the default group (gloo on CPU; NCCL + gloo on GPU) and megatron-core's parallel groups.

    `timeout_minutes` bounds every wait in a collective of these groups (`parallel.timeout_minutes`)."""
    import deepspeed

    rank, world, local_rank = world_from_environment()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = process_group_backend(device.type)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        start_default_group(backend, rank, world, timeout)
    if device.type == "cpu":
        skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)  # adopts the group
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             distributed_timeout_minutes=timeout_minutes)
    return Layout(
        world=world, rank=rank, tp=tp, pp=pp, dp=world // (tp * pp),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        device=device,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
