"""Files that readers see whole or not at all."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from common.errors import UserError


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Readers see the old content or the new, never a torn file (also across a SIGKILL or power loss)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON (indented, keys sorted), atomically, in a directory created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in `path` survive a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def output_directory(path: str | os.PathLike) -> Path:
    """Create `path` and check that it takes files: an output that cannot be created or
    written is one line before any work, not a traceback from inside a shard. A URL is refused:
    the commands that write to object stores never come here for one (they would make a local
    `s3:/...` directory)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", str(path)):
        raise UserError(f"--output {path}: this command writes local files only")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise UserError(f"cannot write to --output {path}: {err.strerror}") from None
    return path


class AtomicOutput:
    """Context-manager protocol for writers that publish on success and clean up on error:
    subclasses define `close()` (rename into place) and `abort()` (delete the tmp files)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
