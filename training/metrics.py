"""Throughput accounting (FLOPs, MFU) and the metrics sinks: metrics.jsonl and TensorBoard."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from training.config import ModelConfig

# Dense peak TFLOP/s per GPU by (name fragment, precision); checked against vendor datasheets.
GPU_PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0, ("H100", "fp16"): 989.0, ("H100", "fp32"): 494.0,  # fp32 via TF32
    ("A100", "bf16"): 312.0, ("A100", "fp16"): 312.0, ("A100", "fp32"): 156.0,
    ("V100", "fp16"): 125.0, ("V100", "fp32"): 15.7,
}


def training_flops_per_token(model: ModelConfig) -> float:
    """Model FLOPs per trained token: 3 x forward (forward + 2x backward), no recomputation.

    Forward per token: 2 FLOPs per weight of every matmul (QKV, projection, MLP, output
    layer) plus attention scores and weighted sum (2 x 2 x seq x inner per layer), as in
    Narayanan et al. 2021 (their 72·B·s·l·h²(1 + s/6h) + 6·B·s·h·V for 4h MLPs).
    """
    h, inner = model.d_model, model.n_heads * model.head_dim
    ffn = model.ffn_multiplier * h
    matmul_weights = model.n_layers * (h * 3 * inner + inner * h + 2 * h * ffn) + h * model.vocab_size
    attention = model.n_layers * 2 * 2 * model.seq_length * inner
    return 3.0 * (2.0 * matmul_weights + attention)


def measure_cpu_peak_tflops(size: int = 1024, repeats: int = 4) -> float:
    """A CPU has no datasheet peak we can trust: measure this process's fp32 GEMM rate instead."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def device_peak_tflops(device: torch.device, precision: str, configured: float) -> float:
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for (fragment, prec), peak in GPU_PEAK_TFLOPS.items():
            if fragment in name and prec == precision:
                return peak
        raise ValueError(f"no known peak for {name} at {precision}: set logging.peak_tflops")
    return measure_cpu_peak_tflops()


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
