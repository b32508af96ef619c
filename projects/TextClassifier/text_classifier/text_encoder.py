"""Class names -> fixed unit vectors, the stand-in for a text encoder such as CLIP's.

Each name is embedded as its hashed character trigrams (signed feature hashing with CRC-32, so the
vectors are the same on every machine and Python version), then L2-normalised: names that share
spelling get similar vectors. A real open-vocabulary model would call its text encoder here."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor


def encode_class_names(names: list[str], dim: int) -> Tensor:
    """names (K) -> float32 [K, dim], each row of unit length."""
    if dim <= 0:
        raise ValueError(f"MODEL.TEXT_CLASSIFIER.EMBED_DIM must be positive, got {dim}")
    out = torch.zeros(len(names), dim)
    for row, name in enumerate(names):
        text = f"  {name.lower()} "
        for i in range(len(text) - 2):
            code = zlib.crc32(text[i : i + 3].encode("utf-8"))
            out[row, code % dim] += 1.0 if (code >> 31) & 1 else -1.0
        if not out[row].any():
            raise ValueError(f"class name {name!r} gives an all-zero embedding; give it a longer name")
    return torch.nn.functional.normalize(out, dim=-1)
