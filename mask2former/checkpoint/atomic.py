"""Atomic file writing: readers see either the old file or the complete new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(file)` so that readers see either the old file or the
    complete new one: temporary file in the same folder, flush + fsync, `os.replace`, then an
    fsync of the folder so the rename survives a power loss. Temporary files of `path` left by
    a killed writer are removed first; a failed write leaves no temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp."
    for stale in os.listdir(folder):  # left by a writer killed mid-write
        if stale.startswith(prefix):
            os.remove(os.path.join(folder, stale))
    tmp = os.path.join(folder, f"{prefix}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)
