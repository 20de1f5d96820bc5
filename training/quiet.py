"""Silence third-party start-up messages that ask nothing of the user; real warnings stay.

Every trainer and tool run printed megatron-core's four "Transformer Engine and Apex are not
installed" warnings (it falls back to torch, which is what this repository uses anyway),
DeepSpeed's "Setting accelerator to CPU" (a CPU run is deliberate here), megatron-core's
"Building a BlendedDataset for a single MegatronDataset" (said for every split), torch's "No
CUDA runtime is found" (a CPU machine with a CUDA toolkit installed) and, per data-parallel
rank, torch's deprecation of the all-gather DeepSpeed's ZeRO calls. Only these exact
messages are dropped; every other warning and log record passes.
"""
from __future__ import annotations

import logging
import re
import warnings

NOISE_WARNINGS = (  # (message prefix, category)
    ("Transformer Engine and Apex are not installed", UserWarning),
    ("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning),
)
NOISE_LOGS = {  # logger name -> messages it drops (prefixes)
    "DeepSpeed": ("Setting accelerator to CPU",),
    "megatron.core.datasets.blended_dataset": ("Building a BlendedDataset for a single MegatronDataset",),
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),  # a CUDA toolkit on a machine without a GPU
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def silence_third_party_noise() -> None:
    """Install the filters; called once, by `training/__init__.py`, before megatron-core or DeepSpeed load."""
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name, prefixes in NOISE_LOGS.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))
