"""Checkpoints as an attacker would craft them: a file replaced by a pickle that runs code, the manifest re-signed."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint_files import file_digest


class CreatesFile:
    """Unpickling it creates a file: the least of what code in a crafted checkpoint file could do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def craft(checkpoint: Path, name: str, content) -> None:
    """Put `content` in the checkpoint's file `name` and its size and checksum in the manifest (checksums are no
    signatures: anyone who can write the file can write them)."""
    torch.save(content, checkpoint / name)
    manifest_path = checkpoint / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {"bytes": (checkpoint / name).stat().st_size, "xxh3": file_digest(checkpoint / name)}
    manifest_path.write_text(json.dumps(manifest))
