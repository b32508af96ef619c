"""SHA-256 digests recorded beside the files this project writes, and checked when they are read.

`record_sha256(path)` writes `<path>.sha256` (the `sha256sum` format: `<hex digest>  <file name>`)
atomically, after the file itself is complete. `verify_sha256(path)` recomputes the digest and
raises `CheckpointError` when it differs from the recorded one, so one flipped bit in a checkpoint,
an exported program or a cached download is found before the file is used. A file without a
recorded digest (written by another tool, or by an older version of this project) is not checked:
`verify_sha256` returns False and the caller decides what to say.
"""

from __future__ import annotations

import hashlib
import os
import re

from .atomic import atomic_write
from .errors import CheckpointError

SHA256_SUFFIX = ".sha256"
_CHUNK = 1 << 20


def sha256_path(path: str) -> str:
    """Where the digest of `path` is recorded."""
    return path + SHA256_SUFFIX


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_sha256(path: str) -> str:
    """Write the SHA-256 of `path` to `<path>.sha256` (atomically); returns the digest."""
    digest = file_sha256(path)
    line = f"{digest}  {os.path.basename(path)}\n"
    atomic_write(sha256_path(path), lambda f: f.write(line.encode()))
    return digest


def recorded_sha256(path: str) -> str | None:
    """The digest recorded for `path`, or None when there is no `<path>.sha256`."""
    sidecar = sha256_path(path)
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar, "rb") as f:
        text = f.read(4096).decode("ascii", errors="replace")
    match = re.match(r"([0-9a-f]{64})\b", text.strip())
    if match is None:
        raise CheckpointError(f"{sidecar} does not hold a SHA-256 digest, so {path} cannot be verified")
    return match.group(1)


def verify_sha256(path: str) -> bool:
    """Check `path` against its recorded digest. Returns True when it matched, False when no digest
    is recorded; raises CheckpointError (naming both files and digests) when it differs."""
    expected = recorded_sha256(path)
    if expected is None:
        return False
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 is {actual}, but {sha256_path(path)} recorded {expected} "
            "when it was written"
        )
    return True


def remove_with_sha256(path: str) -> None:
    """Delete a file and its recorded digest (either may be absent)."""
    for p in (path, sha256_path(path)):
        if os.path.lexists(p):
            os.remove(p)
