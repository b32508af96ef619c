"""Weights prepared once for inference (folded, cast to the autocast dtype) and kept until they change."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["cpu_autograd_records", "graph_capture_active", "inference_weights", "preparing_weights_allowed"]


def graph_capture_active() -> bool:
    """Whether the model is being traced, exported or compiled (which record portable operators)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def cpu_autograd_records(*tensors: Tensor) -> bool:
    """Whether autograd records an operator on these CPU tensors (gradient mode on, one of them
    requiring a gradient) with nothing tracing, exporting or compiling: where the CPU training paths
    of the layers apply."""
    return (
        tensors[0].device.type == "cpu"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and not graph_capture_active()
    )


def preparing_weights_allowed() -> bool:
    """Prepared weights are plain tensors outside autograd and outside any graph: use them only without
    gradients and when nothing traces, exports or compiles the model."""
    return not torch.is_grad_enabled() and not graph_capture_active()


def inference_weights(
    module: nn.Module,
    sources: Sequence[Tensor | None],
    dtype: torch.dtype | tuple[torch.dtype, float],
    make: Callable[[], tuple],
) -> tuple:
    """`make()` (tensors derived from `sources` in `dtype`), cached on `module` until a source tensor is
    replaced or changed in place (its storage or version counter moves) or `dtype` changes."""
    key = (dtype, *((t.data_ptr(), t._version) if t is not None else None for t in sources))
    cached = module.__dict__.get("_inference_weights")
    if cached is None or cached[0] != key:
        cached = (key, make())
        module.__dict__["_inference_weights"] = cached  # a plain attribute: not saved, not a buffer
    return cached[1]
