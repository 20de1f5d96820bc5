"""GPU-only code paths that can be checked without a GPU: backends, datasheet peaks, device choice."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from common.errors import UserError
from training.distributed import process_group_backend, resolve_device
from training.metrics import GPU_PEAK_TFLOPS, gpu_peak_tflops


def test_gpu_group_gives_cpu_tensors_a_backend():
    """torch's own parser reads our backend string as NCCL for CUDA tensors and gloo for CPU ones."""
    config = dist.distributed_c10d.BackendConfig(process_group_backend("cuda"))
    assert config.get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
    assert process_group_backend("cpu") == "gloo"


@pytest.mark.parametrize("name, precision, tf32, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", True, 989.0),
    ("NVIDIA H100 PCIe", "bf16", True, 756.0),
    ("NVIDIA H200", "bf16", True, 989.0),
    ("NVIDIA H200 NVL", "fp16", True, 835.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", True, 156.0),  # TF32 tensor cores
    ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5),  # plain fp32
    ("NVIDIA A10G", "bf16", True, 70.0),  # not the A100's
    ("NVIDIA L40S", "bf16", True, 362.0),  # not the L40's
    ("NVIDIA B200", "bf16", True, 2250.0),
    ("AMD Instinct MI300X", "bf16", True, 1307.0),
])
def test_datasheet_peaks(name, precision, tf32, peak):
    assert gpu_peak_tflops(name, precision, tf32) == peak


def test_no_entry_is_shadowed_by_an_earlier_shorter_name():
    """The first matching fragment wins: every GPU must find its own row (e.g. "A10" must not catch "A100")."""
    for fragment, peaks in GPU_PEAK_TFLOPS:
        for precision, peak in peaks.items():
            if precision != "tf32":
                assert gpu_peak_tflops(f"NVIDIA {fragment}", precision, tf32=False) == peak, fragment


@pytest.mark.parametrize("name, precision", [("NVIDIA RTX PRO 9000 Blackwell", "bf16"), ("Tesla V100-SXM2-16GB", "bf16")])
def test_unknown_gpu_or_precision_warns_and_gives_no_peak(name, precision):
    with pytest.warns(UserWarning, match="MFU is logged as null"):
        assert gpu_peak_tflops(name, precision, tf32=True) is None


def test_device_option():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match="only cpu and cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
