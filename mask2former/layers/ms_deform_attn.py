"""Multi-scale deformable attention (Zhu et al., Deformable DETR), the pixel decoder's core op.

Shape shorthand in this module:
    B  batch            S  flattened positions over all levels (sum of H_l * W_l)
    Q  queries          M  heads           D  channels per head
    L  levels           P  sampling points per head and level

Sampling locations are normalised to [0, 1] per level, (x, y) order; bilinear sampling treats the
feature map as zero outside (grid_sample with align_corners=False and zero padding).

Two implementations:
- the compiled op `torch.ops.mask2former.ms_deform_attn` from the extension `mask2former._C`
  (C++ CPU kernels, CUDA kernels when built with them), with autograd and a fake implementation
  registered by `layers/extension.py` so that it works under `torch.compile` and `torch.export`;
- `ms_deform_attn_reference`, pure PyTorch (one grid_sample per level): the test oracle, and the
  fallback when the extension is not built.
`ms_deform_attn(..., impl="auto")` picks the compiled op when it is loaded for the input's device;
inside `with deform_attn_implementation(...)` calls with impl="auto" use the implementation named
there instead (ONNX export uses the reference: grid_sample becomes ONNX GridSample).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .extension import BUILD_HINT, EXTENSION, compiled_op_available, load_extension

__all__ = [
    "deform_attn_implementation",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]

_IMPLS = ("auto", "compiled", "reference")

_fallback_warned: set[str] = set()
# Stack of (impl, level shapes or None) set by deform_attn_implementation(); the innermost wins.
_overrides: list[tuple[str, tuple[tuple[int, int], ...] | None]] = []


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch multi-scale deformable attention (one grid_sample per level).

    Args:
        value: [B, S, M, D]
        spatial_shapes: [L, 2] (H_l, W_l) per level
        sampling_locations: [B, Q, M, L, P, 2] in [0, 1], (x, y)
        attention_weights: [B, Q, M, L, P]
    Returns:
        [B, Q, M * D]
    """
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] and one dtype (under autocast the value may be half precision)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = value_per_level[level].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)  # [B*M, D, H, W]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*M, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = (
        attention_weights.to(value.dtype).transpose(1, 2).reshape(B * M, 1, Q, L * P)
    )  # [B*M, 1, Q, L*P]
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Q]
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()


def _warn_fallback_once(device_type: str) -> None:
    if device_type in _fallback_warned:
        return
    _fallback_warned.add(device_type)
    built = load_extension() is not None
    reason = f"was built without {device_type} kernels" if built else "is not built"
    warnings.warn(
        f"ms_deform_attn: the compiled op ({EXTENSION}) {reason}; using the slower PyTorch path on "
        f"{device_type}. To use the compiled op, {BUILD_HINT}.",
        RuntimeWarning,
        stacklevel=4,
    )


def _resolve_impl(impl: str, device_type: str) -> str:
    """The implementation that runs: "compiled" or "reference" (see `ms_deform_attn`)."""
    if impl not in _IMPLS:
        raise ValueError(f"ms_deform_attn: impl must be one of {_IMPLS}, got {impl!r}")
    available = compiled_op_available(device_type)
    if impl == "auto":
        if not available:
            _warn_fallback_once(device_type)
        return "compiled" if available else "reference"
    if impl == "compiled" and not available:
        raise RuntimeError(
            f"ms_deform_attn: impl='compiled' but {EXTENSION} has no kernel for {device_type} "
            f"(extension loaded: {load_extension() is not None}); {BUILD_HINT}"
        )
    return impl


# Evaluated once per trace under torch.compile (the extension is loaded outside the graph), so that
# even a first call inside a compiled region works with fullgraph=True. This is the marker that
# `torch.compiler.assume_constant_result` sets; set here directly because that decorator imports
# torch._dynamo (about a second) when this module is imported, compiled or not.
# test_torch_compile_fullgraph_forward_backward checks that Dynamo still honours it.
_resolve_impl._dynamo_marked_constant = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def deform_attn_implementation(
    impl: str, *, level_shapes: Sequence[tuple[int, int]] | None = None
) -> Iterator[None]:
    """Within the block, `ms_deform_attn` calls made with impl="auto" (as the pixel decoder's are)
    use `impl` ("compiled" or "reference"); calls naming an impl explicitly are unaffected.

    `level_shapes` [(H_l, W_l)] (reference only) are the levels' sizes as Python ints, used instead of
    reading the values of `spatial_shapes`: a tracer such as `torch.export` knows a tensor's shape
    but not its values, and the reference needs the sizes to split and reshape the value per level.
    They are checked against `spatial_shapes` when its values are known and against S otherwise.
    Not thread-safe: it sets a module-level default for the duration of the block.
    """
    if impl not in ("compiled", "reference"):
        raise ValueError(f"deform_attn_implementation: impl must be 'compiled' or 'reference', got {impl!r}")
    if level_shapes is not None and impl != "reference":
        raise ValueError("deform_attn_implementation: level_shapes only apply to impl='reference'")
    shapes = tuple((int(h), int(w)) for h, w in level_shapes) if level_shapes is not None else None
    _overrides.append((impl, shapes))
    try:
        yield
    finally:
        _overrides.pop()


def _checked_level_shapes(
    level_shapes: tuple[tuple[int, int], ...], spatial_shapes: Tensor, value: Tensor
) -> tuple[tuple[int, int], ...]:
    """`level_shapes` after checking them against the call's spatial_shapes [L, 2] and value [B, S, M, D]."""
    if sum(h * w for h, w in level_shapes) != value.shape[1] or len(level_shapes) != spatial_shapes.shape[0]:
        raise ValueError(
            f"deform_attn_implementation: level_shapes {list(level_shapes)} do not fit value with "
            f"S={value.shape[1]} positions over {spatial_shapes.shape[0]} levels"
        )
    if not torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        actual = [tuple(s) for s in spatial_shapes.tolist()]
        if actual != list(level_shapes):
            raise ValueError(
                f"deform_attn_implementation: level_shapes {list(level_shapes)} differ from the "
                f"spatial_shapes of the call {actual}"
            )
    return level_shapes


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Multi-scale deformable attention: [B, S, M, D] values -> [B, Q, M * D].

    The one entry point the model calls; see `ms_deform_attn_reference` for the argument shapes.
    `spatial_shapes` [L, 2] and `level_start_index` [L] (offset of each level in S) are int64, best on
    the CPU also for GPU inputs: the compiled op reads and checks them on the host before launching
    (on a GPU they cost a copy to the host, a synchronisation, on every call).
    On CUDA the gradient of `value` is scattered with atomic additions, so it varies in the last bits
    between runs: under `torch.use_deterministic_algorithms(True)` its backward raises (or warns with
    warn_only=True); the CPU backward is deterministic.
    `impl`: "compiled" (the extension; raises if it has no kernel for the device), "reference" (pure
    PyTorch), or "auto": compiled when available for `value.device`, else the reference with a one-time
    warning that says how to build the op. The compiled op accepts float16 / bfloat16 values with
    float32 locations and weights (as under autocast), accumulates in float32 and returns value's dtype.
    See `deform_attn_implementation` for changing what "auto" means within a block.
    """
    if impl == "auto" and _overrides:
        impl, level_shapes = _overrides[-1]
        if level_shapes is not None:
            level_shapes = _checked_level_shapes(level_shapes, spatial_shapes, value)
            return ms_deform_attn_reference(value, level_shapes, sampling_locations, attention_weights)
    if _resolve_impl(impl, value.device.type) == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
    return torch.ops.mask2former.ms_deform_attn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
