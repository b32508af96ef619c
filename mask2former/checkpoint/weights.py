"""Reading and writing model weights with the original project's parameter names.

Formats read: a Detectron2-style `.pkl` (`{"model": {name: numpy array}, ...}`), a `.pth`/`.pt`
holding a state dict or `{"model": state_dict}`, or a state dict in memory. Nothing in a file is
ever executed, and a hostile file cannot crash the process or exhaust memory (see `safe_load`).
Written files get a SHA-256 beside them (`<file>.sha256`, see `integrity`), checked when read.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_write
from .checkpointer import find_nonfinite
from .errors import CheckpointError
from .integrity import record_sha256, remove_with_sha256, sha256_path, verify_sha256
from .safe_load import (
    allocation_budget,
    check_numeric,
    check_tensor_budget,
    read_torch_file,
    read_weights_pickle,
)

logger = logging.getLogger(__name__)


def load_state_dict_file(path: str, *, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read a weights file (local path, http(s) URL or `detectron2://...`) into a state dict of
    tensors with the file's own key names, within the limits of `safe_load` (`max_bytes` caps the
    arrays' total size). A file with a recorded SHA-256 (`<file>.sha256`) is checked against it; a
    cached download that cannot be read is deleted, so the next run downloads it again."""
    if "://" not in path:
        return _read_state_dict(path, max_bytes)
    from ..utils.weights_download import resolve_weights

    local = resolve_weights(path)
    try:
        return _read_state_dict(local, max_bytes)
    except CheckpointError as e:
        remove_with_sha256(local)
        raise CheckpointError(
            f"{e}. The cached download {local} was deleted; the next run downloads {path} again"
        ) from None


def _read_state_dict(path: str, max_bytes: int | None) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    if not verify_sha256(path):
        logger.info("%s has no recorded SHA-256 (%s): its bytes are not verified", path, sha256_path(path))
    obj = read_weights_pickle(path, max_bytes) if path.endswith(".pkl") else read_torch_file(path)
    state = _to_state_dict(obj, path)
    check_tensor_budget(state, path, allocation_budget(os.path.getsize(path), max_bytes))
    return state


def _to_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: a state-dict key is a {type(k).__name__}, not a parameter name")
        if isinstance(v, np.ndarray):
            check_numeric(k, v, source)
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not an array or tensor")
        out[k] = v
    return out


@dataclass
class LoadReport:
    """What `load_weights` did: keys the model lacked in the file, file keys the model does not
    have, and keys skipped because their shapes differ (name, file shape, model shape)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)


def _match_names(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Map file names onto the model's: older checkpoints name pixel-decoder weights
    `sem_seg_head.<x>` for `sem_seg_head.pixel_decoder.<x>`, and ImageNet-pretrained backbone
    files carry no `backbone.` prefix."""
    has_backbone_prefix = any(k.startswith("backbone.") for k in state)
    out = {}
    for k, v in state.items():
        name = k
        if (
            name not in model_keys
            and name.startswith("sem_seg_head.")
            and not name.startswith("sem_seg_head.pixel_decoder.")
        ):
            candidate = "sem_seg_head.pixel_decoder." + name[len("sem_seg_head.") :]
            if candidate in model_keys:
                name = candidate
        if name not in model_keys and not has_backbone_prefix and "backbone." + name in model_keys:
            name = "backbone." + name
        out[name] = v
    return out


def _shape(shape: tuple) -> str:
    return "x".join(str(n) for n in shape) or "scalar"


def group_keys(keys: list[str], max_groups: int = 12) -> str:
    """Tensor names grouped by module prefix on one line, as Detectron2 logs them:
    `sem_seg_head.predictor.class_embed.{bias, weight}`; at most `max_groups` groups are
    shown, then how many more there are."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        name = key.split(" ", 1)[0]
        prefix, _, leaf = name.rpartition(".")
        groups.setdefault(prefix, []).append(leaf + key[len(name) :])
    parts = [
        (f"{p}." if p else "") + (leaves[0] if len(leaves) == 1 else "{" + ", ".join(sorted(leaves)) + "}")
        for p, leaves in groups.items()
    ]
    more = f" and {len(parts) - max_groups} more module(s)" if len(parts) > max_groups else ""
    return "; ".join(parts[:max_groups]) + more


def load_weights(
    model: nn.Module, weights: str | dict[str, Tensor], *, allow_partial: bool = False
) -> LoadReport:
    """Load weights (a path/URL or a state dict with the original's names) into `model`.

    Missing and unexpected keys are reported; tensors whose shape differs from the model's (for
    example the class head when fine-tuning with another NUM_CLASSES) are skipped with a warning
    that lists them. Weights holding NaN/inf are refused (CheckpointError), and so are weights
    that leave most of the model unloaded, unless `allow_partial` (fine-tuning from a pretrained
    backbone), where the warnings list what was left. Nothing is loaded when an error is raised.
    Returns a LoadReport."""
    source = weights if isinstance(weights, str) else "<state dict>"
    state = load_state_dict_file(weights) if isinstance(weights, str) else _to_state_dict(weights, source)
    target = model.state_dict()
    state = _match_names(state, set(target))
    report = LoadReport()
    usable = {}
    for k, v in state.items():
        if k not in target:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(target[k].shape)))
        else:
            usable[k] = v.to(target[k].dtype)
    report.missing = [k for k in target if k not in usable and k not in {m[0] for m in report.mismatched}]
    _check_loadable(usable, target, source, allow_partial)
    model.load_state_dict(usable, strict=False)
    if report.mismatched:
        head = any(".class_embed." in k for k, _, _ in report.mismatched)
        logger.warning(
            "%s: %d tensor(s) left at their initial values%s, their shape differs from the model's "
            "(file -> model): %s",
            source,
            len(report.mismatched),
            " (the class head is re-initialised)" if head else "",
            group_keys([f"{k} {_shape(a)}->{_shape(b)}" for k, a, b in report.mismatched]),
        )
    if report.missing:
        logger.warning(
            "%s: %d model tensor(s) not in the file: %s",
            source,
            len(report.missing),
            group_keys(report.missing),
        )
    if report.unexpected:
        logger.warning(
            "%s: %d file tensor(s) the model does not use: %s",
            source,
            len(report.unexpected),
            group_keys(report.unexpected),
        )
    logger.info("loaded %d tensor(s) from %s", len(usable), source)
    return report


def _check_loadable(
    usable: dict[str, Tensor], target: dict[str, Tensor], source: str, allow_partial: bool
) -> None:
    """Refuse non-finite weights, and (unless `allow_partial`) weights setting less than half of
    the model's tensors or values: evaluating or serving such a model gives meaningless output."""
    bad = find_nonfinite(usable)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {shown}; refusing to load them")
    total = sum(t.numel() for t in target.values())
    loaded = sum(t.numel() for t in usable.values())
    if not allow_partial and (loaded < total / 2 or len(usable) < len(target) / 2):
        raise CheckpointError(
            f"{source} sets only {len(usable)} of the model's {len(target)} tensors ({loaded} of {total} values, "
            f"{loaded / max(total, 1):.0%}): most of the model would keep its random initialisation. Check that "
            "the file is the model's weights (not a backbone or another architecture); to fine-tune from "
            "partial weights call load_weights(..., allow_partial=True)"
        )


def write_state_dict(
    state: dict[str, Tensor | np.ndarray],
    path: str,
    *,
    author: str = "mask2former",
    matching_heuristics: bool = False,
    metadata: dict | None = None,
) -> None:
    """Write a state dict atomically (see `atomic_write`). A `.pkl` path gets the
    Detectron2 layout (`{"model": {name: numpy array}, "__author__", "matching_heuristics"}`,
    loadable by the original project); any other path gets `{"model": state_dict}` as a torch file.
    `matching_heuristics` marks files whose names lack the `backbone.` prefix (pretrained backbones).
    `metadata` (plain data, see `checkpoint.metadata`) is stored under a top-level "metadata" key."""
    tensors = {k: torch.as_tensor(v).detach().cpu() for k, v in state.items()}

    def write(f: BinaryIO) -> None:
        if path.endswith(".pkl"):
            arrays = {
                k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in tensors.items()
            }
            content = {"model": arrays, "__author__": author, "matching_heuristics": matching_heuristics}
            if metadata is not None:
                content["metadata"] = metadata
            pickle.dump(content, f)
        else:
            torch.save(
                {"model": tensors} if metadata is None else {"model": tensors, "metadata": metadata}, f
            )

    atomic_write(path, write)
    record_sha256(path)


def save_weights(model: nn.Module, path: str, metadata: dict | None = None) -> None:
    """Write the model's weights with the original's key names and, when given, the training
    dataset's metadata (see `write_state_dict`)."""
    write_state_dict(model.state_dict(), path, metadata=metadata)
