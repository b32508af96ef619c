"""Settings read from (and one default written to) environment variables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def positive_env_number(name: str, default: Number, parse: Callable[[str], Number], unit: str) -> Number:
    """`$name` parsed by `parse` (unset or empty: `default`); ValueError naming the variable when it
    is not a number of `unit` or not positive."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of {unit}") from None
    if not number > 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


# Variables through which a user has chosen how OpenMP threads wait (standard, GNU, LLVM/Intel).
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


# Spin iterations of an idle GNU OpenMP thread before it sleeps (GNU's default: 300 000).
OPENMP_SPIN_COUNT = "2000"


def bound_openmp_spinning() -> None:
    """Set GOMP_SPINCOUNT=2000 unless the user chose how OpenMP threads wait or PyTorch is already loaded.

    PyTorch's CPU operators run in OpenMP parallel regions (several thousand per training step). By
    default GNU OpenMP's idle threads spin for 300 000 iterations after each region; when another
    process uses a core, the spinning threads take the CPU from the thread doing the work. R50
    training steps at 2 threads beside one busy process on a 2-core machine (README "Benchmarks"):
    16-22 s with the default, 2.6 s with 2000 spins, 2.3 s with passive waiting
    (OMP_WAIT_POLICY=PASSIVE); on the idle machine 1.28 s, 1.41 s and 1.56 s. The bounded spin keeps
    most of the idle speed and avoids the collapse. The OpenMP runtime reads the variable once, when
    PyTorch loads it, so this must run before `import torch`: `import mask2former` first does it
    (the package's `__init__`), and so do the tools. Processes started later (launch workers,
    data-loader workers) inherit it.
    """
    if "torch" in sys.modules or any(name in os.environ for name in OPENMP_WAIT_VARIABLES):
        return
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
