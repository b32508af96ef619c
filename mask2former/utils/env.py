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


def prefer_passive_openmp_wait() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a wait policy or PyTorch is already loaded.

    PyTorch's CPU operators run in OpenMP parallel regions (several thousand per training step). By
    default GNU OpenMP's idle threads spin for ~300 000 iterations after each region; when another
    process uses a core, the spinning threads take the CPU from the thread doing the work, and a step
    at 2 threads took 10x longer than with passive waiting (tools/benchmark_train.py, README
    "Benchmarks"). The OpenMP runtime reads the variable once, when PyTorch loads it, so this must run
    before `import torch`: `import mask2former` first does it (the package's `__init__`), and so do
    the tools. Processes started later (launch workers, data-loader workers) inherit it.
    """
    if "torch" in sys.modules or any(name in os.environ for name in OPENMP_WAIT_VARIABLES):
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
