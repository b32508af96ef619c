"""The floating-point precision a config asks for, checked against the device it runs on.

float16 autocast on a CPU is emulated and very slow (in one measurement 4 training iterations
took 253 s in float16 against 14 s in bfloat16), so float16 requested for a CPU runs in bfloat16,
with one warning saying so. bfloat16 has float32's exponent range, so it needs no gradient scaler.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def autocast_dtype(name: str, device_type: str, key: str) -> torch.dtype:
    """The dtype config key `key` (value `name`) gives on `device_type` ("cpu", "cuda", ...):
    float16 on a CPU becomes bfloat16, with one warning per key and process."""
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    if name == "float16" and device_type == "cpu":
        _warn_once(
            f"{key} is float16, which the CPU only emulates (tens of times slower than bfloat16); "
            "running in bfloat16 instead. Set it to bfloat16 to silence this warning."
        )
        return torch.bfloat16
    return DTYPES[name]
