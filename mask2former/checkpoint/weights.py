"""Reading and writing model weights with the original project's parameter names.

Formats read: a Detectron2-style `.pkl` (`{"model": {name: numpy array}, ...}`), a `.pth`/`.pt`
holding a state dict or `{"model": state_dict}`, or a state dict in memory. Nothing in a file is
ever executed: `.pkl` files go through an unpickler that only rebuilds numpy arrays and plain
containers, and torch files are read with `weights_only=True`.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_write

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A weights file that cannot be read safely; the message names the file."""


# (module, name) pairs a Detectron2 weights pickle may reference: numpy arrays and containers.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol-5 pickles
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weights file")


def _read_pickle(path: str) -> object:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: {e}; weights files may hold arrays only, never code"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(f"cannot read {path} as a weights pickle: {e}") from None


def _read_torch(path: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds objects beyond tensors and plain containers ({e}); "
            "weights files are loaded with weights_only=True and never run code"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """Read a weights file (local path, http(s) URL or `detectron2://...`) into a state dict of
    tensors with the file's own key names."""
    if "://" in path:
        from ..utils.weights_download import resolve_weights

        path = resolve_weights(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    obj = _read_pickle(path) if path.endswith(".pkl") else _read_torch(path)
    return _to_state_dict(obj, path)


def _to_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not an array or tensor")
        out[str(k)] = v
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


def load_weights(model: nn.Module, weights: str | dict[str, Tensor]) -> LoadReport:
    """Load weights (a path/URL or a state dict with the original's names) into `model`.

    Missing and unexpected keys are reported; tensors whose shape differs from the model's (for
    example the class head when fine-tuning with another NUM_CLASSES) are skipped with a warning
    that lists them. Returns a LoadReport."""
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


def save_weights(model: nn.Module, path: str, metadata: dict | None = None) -> None:
    """Write the model's weights with the original's key names and, when given, the training
    dataset's metadata (see `write_state_dict`)."""
    write_state_dict(model.state_dict(), path, metadata=metadata)
