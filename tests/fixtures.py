"""Access to the reference fixtures recorded from the original implementation.

They live in `shared/fixtures/` beside the checkout (`MASK2FORMER_FIXTURES` overrides the
folder). Tests that need them skip with the reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURES_DIR = Path(os.environ.get("MASK2FORMER_FIXTURES", _DEFAULT))


def load_fixture(name: str = "reference_tiny_r18.pt") -> dict:
    path = FIXTURES_DIR / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set MASK2FORMER_FIXTURES)")
    return torch.load(path, weights_only=True)


def unpack_state_dict(fixture: dict) -> dict[str, torch.Tensor]:
    """The fixture's full state dict (int8-packed tensors expanded exactly)."""
    packed = {k: v["int8"].float() * 2.0 ** v["exp"] for k, v in fixture["state_dict_packed"].items()}
    return {**fixture["state_dict_float"], **packed}
