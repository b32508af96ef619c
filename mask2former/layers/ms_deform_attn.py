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
  registered here so that it works under `torch.compile` and `torch.export`;
- `ms_deform_attn_reference`, pure PyTorch (one grid_sample per level): the test oracle, and the
  fallback when the extension is not built.
`ms_deform_attn(..., impl="auto")` picks the compiled op when it is loaded for the input's device;
inside `with deform_attn_implementation(...)` calls with impl="auto" use the implementation named
there instead (ONNX export uses the reference: grid_sample becomes ONNX GridSample).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "compiled_op_available",
    "deform_attn_implementation",
    "load_extension",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(add FORCE_CUDA=1 to compile the CUDA kernels on a machine without a visible GPU)"
)
_EXTENSION = "mask2former._C"
_OP_NAME = "mask2former::ms_deform_attn"
_BACKWARD_NAME = "mask2former::ms_deform_attn_backward"
_IMPLS = ("auto", "compiled", "reference")

# Filled by load_extension() on its first call: {"module": the loaded extension or None}.
_loaded: dict[str, ModuleType | None] = {}
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


def _fake_forward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Output metadata of the compiled op: [B, Q, M * D] in value's dtype."""
    B, _, M, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], M * D))


def _fake_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient metadata: the shapes and dtypes of value, sampling_locations and attention_weights,
    or an empty [0] tensor for a gradient that output_mask does not ask for."""
    grad_value, grad_locations, grad_weights = (
        t.new_empty(t.shape if wanted else (0,))
        for t, wanted in zip((value, sampling_locations, attention_weights), output_mask)
    )
    return grad_value, grad_locations, grad_weights


def _fake_sample_shared_points(maps: Tensor, points: Tensor) -> Tensor:
    """Output metadata of `mask2former::sample_shared_points` (the matcher's point reader, see
    modeling/point_sampling.py): maps [N, H, W], points [P, 2] -> [N, P]."""
    return maps.new_empty((maps.shape[0], points.shape[0]))


def _fake_sigmoid_and_sums(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Output metadata of `mask2former::sigmoid_and_sums` (the matcher's mask-cost terms, see
    modeling/matcher.py): logits [Q, P] -> sigmoid [Q, P], softplus and sigmoid row sums [Q]."""
    rows = logits.shape[0]
    return logits.new_empty(logits.shape), logits.new_empty((rows,)), logits.new_empty((rows,))


def _fake_group_norm_backward(
    grad_output: Tensor, input: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient metadata of `mask2former::group_norm_backward_channels_last` (layers/group_norm.py): the
    input's gradient channels-last, the weight's and bias's [C] in the statistics' dtype."""
    channels = input.shape[1]
    grad_input = torch.empty_like(input, memory_format=torch.channels_last)
    return grad_input, mean.new_empty((channels,)), mean.new_empty((channels,))


def _fake_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Output metadata of `mask2former::attention` (the Transformer decoder's attention on the CPU, see
    modeling/transformer_decoder/masked_attention_decoder.py): q [B, M, Lq, D] -> out [B, M, Lq, D] in q's
    dtype, row log-sum-exp [B, M, Lq] in float32 (float64 for float64 q)."""
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)


def _fake_attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient metadata of `mask2former::attention`: the shapes and dtypes of q, k and v."""
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    q, k, v, allowed, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, allowed, out, lse)
    ctx.scale = scale


def _attention_backward(ctx, grad_out: Tensor, grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
    """dq, dk, dv in one pass that recomputes the attention weights from the saved log-sum-exp."""
    q, k, v, allowed, out, lse = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.mask2former.attention_backward(
        grad_out, q, k, v, allowed, out, lse, ctx.scale
    )
    return grad_q, grad_k, grad_v, None, None


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
    """Only the gradients autograd needs are computed (the CUDA kernel skips the value scatter or the
    per-sample gradients); the others are None."""
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]]
    if not any(wanted):
        return None, None, None, None, None
    grads = torch.ops.mask2former.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, wanted
    )
    grad_value, grad_locations, grad_weights = (g if w else None for g, w in zip(grads, wanted))
    return grad_value, None, None, grad_locations, grad_weights


def load_extension() -> ModuleType | None:
    """Load `mask2former._C` once and register autograd and the fake kernels of its ops.

    Returns the module, or None when the extension is not built. An extension that exists but fails to
    load (e.g. built against another torch) raises ImportError with the command that rebuilds it.
    """
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    if importlib.util.find_spec(_EXTENSION) is not None:
        try:
            module = importlib.import_module(_EXTENSION)
        except ImportError as err:
            raise ImportError(
                f"{_EXTENSION} is installed but does not load ({err}); re-{BUILD_HINT}"
            ) from err
        if not module.WITH_OPENMP and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
            warnings.warn(
                f"{_EXTENSION} was built without OpenMP, so its CPU kernels run on one thread; re-{BUILD_HINT}",
                RuntimeWarning,
                stacklevel=2,
            )
        torch.library.register_fake(_OP_NAME)(_fake_forward)
        torch.library.register_fake(_BACKWARD_NAME)(_fake_backward)
        torch.library.register_fake("mask2former::sample_shared_points")(_fake_sample_shared_points)
        torch.library.register_fake("mask2former::sigmoid_and_sums")(_fake_sigmoid_and_sums)
        torch.library.register_fake("mask2former::group_norm_backward_channels_last")(
            _fake_group_norm_backward
        )
        torch.library.register_fake("mask2former::attention")(_fake_attention)
        torch.library.register_fake("mask2former::attention_backward")(_fake_attention_backward)
        torch.library.register_autograd(_OP_NAME, _backward, setup_context=_setup_context)
        torch.library.register_autograd(
            "mask2former::attention", _attention_backward, setup_context=_attention_setup_context
        )
    _loaded["module"] = module
    return module


def compiled_op_available(device: torch.device | str) -> bool:
    """Whether the compiled op has kernels for `device` (CPU always when built; CUDA when built with nvcc)."""
    module = load_extension()
    if module is None:
        return False
    device_type = torch.device(device).type
    return device_type in ("cpu", "meta") or (device_type == "cuda" and module.WITH_CUDA)


def _warn_fallback_once(device_type: str) -> None:
    if device_type in _fallback_warned:
        return
    _fallback_warned.add(device_type)
    built = load_extension() is not None
    reason = f"was built without {device_type} kernels" if built else "is not built"
    warnings.warn(
        f"ms_deform_attn: the compiled op ({_EXTENSION}) {reason}; using the slower PyTorch path on "
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
            f"ms_deform_attn: impl='compiled' but {_EXTENSION} has no kernel for {device_type} "
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
