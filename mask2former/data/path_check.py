"""Checks of the files a dataset names, made when the dataset loads (not when a sample is
drawn, hours later):

- a path outside its root folder (an absolute path in a JSON, or `..` leaving the root) is
  refused, unless the environment variable MASK2FORMER_ALLOW_PATHS_OUTSIDE_ROOT=1 allows it;
  the check is on the path as written, so a root that is (or holds) a symlink to another
  disk is fine;
- a symlink loop is refused;
- a FIFO, device, socket or folder where a file should be (any of them can hang or break a
  reader) is refused when a JSON names it, and skipped with one warning when the dataset
  lists a folder.
A file that does not exist is left to the reader, which names it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping

from .detection_utils import DatasetFormatError

logger = logging.getLogger(__name__)

ALLOW_OUTSIDE_ROOT_ENV = "MASK2FORMER_ALLOW_PATHS_OUTSIDE_ROOT"

__all__ = ["ALLOW_OUTSIDE_ROOT_ENV", "check_dataset_paths", "require_regular_file"]


def _inside(path: str, root: str) -> bool:
    p = os.path.normpath(os.path.abspath(path))
    r = os.path.normpath(os.path.abspath(root))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def _not_a_file(path: str, source: str) -> str | None:
    """What `path` is when it is not a regular file ("a FIFO", ...); None for a regular or a
    missing file. A symlink loop raises DatasetFormatError."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DatasetFormatError(f"{source}: {path} is a symlink loop") from None
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def require_regular_file(path: str, what: str) -> None:
    """Refuse `path` before opening it when it is a FIFO, device, socket or folder (opening
    a FIFO blocks until someone writes to it)."""
    kind = _not_a_file(path, what)
    if kind is not None:
        raise DatasetFormatError(f"{what} {path} is {kind}, not a regular file")


def check_dataset_paths(
    dicts: list[dict], source: str, roots: Mapping[str, str | None], listed: bool = False
) -> list[dict]:
    """Check every path `dicts` hold under the keys of `roots` (e.g. {"file_name":
    image_root}) against its root, and refuse symlink loops and special files (see the module
    doc). `source` (the JSON or folder the dicts come from) is named in errors. With `listed`
    (the paths come from listing folders), records naming special files are dropped with one
    warning instead. Returns the records kept."""
    allow_outside = os.environ.get(ALLOW_OUTSIDE_ROOT_ENV, "") == "1"
    kept, skipped = [], []
    for d in dicts:
        special = None
        for key, root in roots.items():
            path = d.get(key)
            if path is None or root is None:
                continue
            if not allow_outside and not _inside(path, root):
                raise DatasetFormatError(
                    f"{source}: {key} {path} of image {d.get('image_id', '')!r} is outside the dataset root "
                    f"{root} (absolute path or '..'); set {ALLOW_OUTSIDE_ROOT_ENV}=1 to allow such paths"
                )
            kind = _not_a_file(path, source)
            if kind is not None and not listed:
                raise DatasetFormatError(f"{source}: {key} {path} is {kind}, not a regular file")
            special = special or (kind and f"{path} ({kind})")
        if special:
            skipped.append(special)
        else:
            kept.append(d)
    if skipped:
        logger.warning(
            "%s: skipped %d entries naming files that are not regular files (a reader could hang): %s",
            source,
            len(skipped),
            ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
        )
    return kept
