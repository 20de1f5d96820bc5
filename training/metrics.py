"""Throughput accounting (FLOPs, MFU) and the metrics sinks: metrics.jsonl, TensorBoard and W&B."""
from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from pathlib import Path

import torch

from common.files import write_text_atomically
from training.config import Config, ModelConfig

# Published dense (no 2:4 sparsity) peak TFLOP/s per GPU: (name fragments, {precision: peak}). "tf32" is
# the fp32 peak with TF32 tensor cores on, "fp32" without. The first entry whose fragment occurs in
# torch.cuda.get_device_name() wins, so more specific names come first ("A100" before "A10").
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("GB200", {"bf16": 2500.0, "fp16": 2500.0, "tf32": 1250.0, "fp32": 80.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1125.0, "fp32": 75.0}),
    ("H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # also GH200
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM
    ("H800", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("H20", {"bf16": 148.0, "fp16": 148.0, "tf32": 74.0, "fp32": 44.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),  # AWS's figures
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("A40", {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16, no TF32
    ("MI325X", {"bf16": 1307.0, "fp16": 1307.0, "tf32": 653.7, "fp32": 163.4}),
    ("MI300X", {"bf16": 1307.0, "fp16": 1307.0, "tf32": 653.7, "fp32": 163.4}),
    ("MI250X", {"bf16": 383.0, "fp16": 383.0, "fp32": 95.7}),
]


def gpu_peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """The datasheet peak for a GPU named `name` at `precision` (fp32 on TF32 cores when `tf32`).

    An unknown GPU must not stop a run for a metric: it warns and returns None (MFU logged as null)."""
    column = "tf32" if precision == "fp32" and tf32 else precision
    peak = next((peaks.get(column) for fragment, peaks in GPU_PEAK_TFLOPS if fragment in name), None)
    if peak is None:
        warnings.warn(f"no known {column} peak for {name}: MFU is logged as null; set logging.peak_tflops "
                      "to the GPU's dense peak TFLOP/s to get it", stacklevel=2)
    return peak


def attended_keys(model: ModelConfig) -> int:
    """Keys per query, summed over the layers, that model FLOPs count: seq on a dense layer (the
    whole score square, as Narayanan et al. count causal attention) and the window on a GPT-3
    banded layer (the whole band, counted alike; not the extra masked keys that its blocks
    compute, which are overhead of the implementation like recomputation)."""
    band = min(model.sparse_window, model.seq_length)
    return sum(band if model.is_sparse_layer(layer) else model.seq_length for layer in range(model.n_layers))


def training_flops_per_token(model: ModelConfig) -> float:
    """Model FLOPs per trained token: 3 x forward (forward + 2x backward), no recomputation.

    Forward per token: 2 FLOPs per weight of every matmul (QKV, projection, MLP, output
    layer) plus attention scores and weighted sum (2 x 2 x keys x inner per layer, keys = seq
    or a banded layer's window), as in Narayanan et al. 2021 (their 72·B·s·l·h²(1 + s/6h) +
    6·B·s·h·V for dense 4h-MLP models).
    """
    h, inner = model.d_model, model.n_heads * model.head_dim
    ffn = model.ffn_multiplier * h
    matmul_weights = model.n_layers * (h * 3 * inner + inner * h + 2 * h * ffn) + h * model.vocab_size
    attention = 2 * 2 * attended_keys(model) * inner
    return 3.0 * (2.0 * matmul_weights + attention)


def measure_cpu_peak_tflops(size: int = 1024, repeats: int = 4) -> float:
    """A CPU has no datasheet peak we can trust: measure this process's fp32 GEMM rate instead."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def device_peak_tflops(device: torch.device, precision: str, configured: float, tf32: bool = False) -> float | None:
    """Peak TFLOP/s per device for MFU: `logging.peak_tflops` if set, else the GPU's datasheet or the CPU's measured rate."""
    if configured > 0:
        return configured
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device), precision, tf32)
    return measure_cpu_peak_tflops()


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a record other than its step (None, e.g. an unknown MFU, is not a number)."""
    return {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}


def wandb_run_id(run_dir: Path) -> str:
    """One W&B run per run directory: a resumed run (a requeued job) goes on logging to the run it started."""
    path = run_dir / "wandb_run_id"
    if not path.is_file():
        write_text_atomically(path, secrets.token_hex(4))  # W&B's own ids: 8 lower-case letters and digits
    return path.read_text().strip()


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard and W&B."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, wandb_project: str = "",
                 wandb_run_name: str = "", run_config: dict | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = self.wandb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if enabled and wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, name=wandb_run_name or None, config=run_config,
                                    dir=os.environ.get("WANDB_DIR", str(run_dir)), id=wandb_run_id(run_dir),
                                    resume="allow")
            self.wandb.define_metric("*", step_metric="step")  # our step, not W&B's count of log calls

    @classmethod
    def for_run(cls, cfg: Config, run_dir: Path, enabled: bool) -> MetricsLog:
        """The sinks `cfg.logging` asks for; `enabled` on the one rank that logs."""
        return cls(run_dir, enabled, cfg.logging.tensorboard, cfg.logging.wandb_project, cfg.logging.wandb_run_name,
                   cfg.to_dict())

    def write(self, record: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {f"{prefix}/{key}": value for key, value in scalars(record).items()}
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, record["step"])
        if self.wandb is not None:  # a rolled-back run logs a step again: W&B's own step would refuse it
            self.wandb.log({**numbers, "step": record["step"]})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
