"""Checkpoints written atomically: a run killed while saving leaves the previous checkpoint."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes a local checkpoint to a hidden temporary file beside it,
    fsyncs it, and renames it over the target, so that `last.ckpt` is always whole.

    Lightning's own write goes through a temporary file in the system temp directory, and
    moving it is a copy into the target when that directory is on another filesystem (a
    node-local /tmp, a tmpfs): a kill during the copy leaves a truncated checkpoint, and the
    bytes are never fsynced. Remote paths (s3://, ...) keep Lightning's write.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        fs, local_path = url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        path = Path(local_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Hidden and not *.ckpt: never read by `seqkit average` or ckpt_path="last". One that a
        # killed save left behind goes now (one process writes a checkpoint directory).
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
