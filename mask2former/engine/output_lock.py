"""One training per OUTPUT_DIR at a time: an advisory lock on `OUTPUT_DIR/.train_lock`.

The lock is `flock` on the file, so the kernel releases it when the holder exits or dies; the
file's text names the holder (pid, host, start time, command line) for the message a second
training gets. Text left by a holder that died without releasing is reported when the next
training takes the lock over (`lock_output_dir` returns it). On file systems without `flock` (some network mounts) the lock
cannot be taken and training refuses to start, naming the reason.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import os
import socket
import sys

LOCK_FILE = ".train_lock"

__all__ = ["LOCK_FILE", "OutputDirInUseError", "lock_output_dir", "unlock_output_dir"]


class OutputDirInUseError(RuntimeError):
    """Another process holds the OUTPUT_DIR lock; the message names it."""


# OUTPUT_DIR (absolute) -> open descriptor holding the lock, for the life of this process
_held: dict[str, int] = {}


def _describe_self() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = " ".join(sys.argv)[:500]
    return f"pid {os.getpid()} on host {socket.gethostname()}, started {started}, command: {command}\n"


def lock_output_dir(output_dir: str) -> str | None:
    """Take the training lock of `output_dir` (kept until `unlock_output_dir` or the end of
    this process; a normal exit releases it cleanly). Raises OutputDirInUseError naming the holder when another process has it.
    Returns the description of a previous holder that died holding it (to be reported), or None."""
    folder = os.path.abspath(output_dir)
    if folder in _held:
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise OutputDirInUseError(
            f"OUTPUT_DIR {folder} is in use by another training: {holder or 'holder unknown'}; "
            f"wait for it to end or choose another OUTPUT_DIR (lock file {path})"
        ) from None
    except OSError as e:
        os.close(fd)
        raise OutputDirInUseError(f"cannot lock OUTPUT_DIR {folder} ({path}): {e}") from None
    stale = _read(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _describe_self().encode(), 0)
    os.fsync(fd)
    if not _held:
        atexit.register(_unlock_all)
    _held[folder] = fd
    return stale or None


def _unlock_all() -> None:
    for folder in list(_held):
        unlock_output_dir(folder)


def unlock_output_dir(output_dir: str) -> None:
    """Release the lock taken by `lock_output_dir` (no-op when this process holds none)."""
    fd = _held.pop(os.path.abspath(output_dir), None)
    if fd is None:
        return
    os.ftruncate(fd, 0)  # an empty file tells the next holder the release was clean
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read(fd: int) -> str:
    data = os.pread(fd, 4096, 0)
    return data.decode("utf-8", "replace").strip()
