"""Large CPU tensors without a page fault on every use.

glibc's malloc serves each block above its mmap threshold (at most 32 MiB) with fresh pages from
the kernel and returns them on free, so every large tensor is paid for again in page faults each
time it is allocated. Post-processing one 512x768 image holds several [Q, H, W] float tensors of
150 MiB: allocating and filling one took 61 ms here, 8 ms from reused heap memory.
`keep_freed_cpu_memory()` makes malloc take every block from its heap and keep freed memory for
reuse (mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD at its maximum). The price: the process's resident
memory stays near its peak instead of shrinking after it. `MASK2FORMER_KEEP_FREED_MEMORY=0` opts out.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Once per process: large allocations from the reused heap (see the module docstring).
    Returns whether the setting is in force; logs one line saying what was done."""
    if os.environ.get("MASK2FORMER_KEEP_FREED_MEMORY", "1") == "0":
        logger.info(
            "MASK2FORMER_KEEP_FREED_MEMORY=0: large CPU tensors come from fresh pages (glibc default)"
        )
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.info(
            "Not on Linux with glibc (%s %s): the CPU allocator is left at its defaults",
            platform.system(),
            platform.libc_ver()[0] or "unknown libc",
        )
        return False
    libc = ctypes.CDLL(None)
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if applied:
        logger.info(
            "CPU allocator: large tensors reuse freed heap memory instead of fresh pages "
            "(MASK2FORMER_KEEP_FREED_MEMORY=0 turns this off)"
        )
    else:
        logger.warning("glibc refused mallopt: large CPU tensors come from fresh pages")
    return applied
