"""Settings read from environment variables."""

from __future__ import annotations

import os
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
