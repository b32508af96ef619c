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
    complete new one (see `atomic_save`)."""

    def write_file(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_save(path, write_file)


def atomic_save(path: str, save: Callable[[str], object]) -> None:
    """Write `path` through `save(file_name)` (for writers that take a file name) so that readers
    see either the old file or the complete new one: `save` writes a temporary file in the same
    folder, which is fsync'ed and renamed with `os.replace`, then the folder is fsync'ed so the
    rename survives a power loss. Temporary files of `path` left by a killed writer are removed
    first; a failed write leaves no temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp."
    for stale in os.listdir(folder):  # left by a writer killed mid-write
        if stale.startswith(prefix):
            os.remove(os.path.join(folder, stale))
    tmp = os.path.join(folder, f"{prefix}{os.getpid()}")
    try:
        save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)
