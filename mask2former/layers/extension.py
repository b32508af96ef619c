"""The compiled ops of `mask2former._C`: loading the extension once, and registering what PyTorch needs
around its ops (fake kernels, which give output metadata to torch.compile and torch.export, and the
autograd formulas of the differentiable ones).

    mask2former::ms_deform_attn (+ _backward)   multi-scale deformable attention (layers/ms_deform_attn.py)
    mask2former::attention (+ _backward)        the Transformer decoder's CPU attention
    mask2former::sample_shared_points           the matcher's point reader (modeling/point_sampling.py)
    mask2former::sigmoid_and_sums               the matcher's mask-cost terms (modeling/matcher.py)
    mask2former::group_norm_backward_channels_last   GroupNorm's CPU backward (layers/group_norm.py)

Sources: mask2former/layers/csrc/ (cpu/*.cpp, cuda/*.cu). `compiled_op_available(device)` says whether the
ops have kernels for a device; callers fall back to PyTorch ops where they do not.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["BUILD_HINT", "EXTENSION", "compiled_op_available", "load_extension"]

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(add FORCE_CUDA=1 to compile the CUDA kernels on a machine without a visible GPU)"
)
EXTENSION = "mask2former._C"

# Filled by load_extension() on its first call: {"module": the loaded extension or None}.
_loaded: dict[str, ModuleType | None] = {}


def _fake_ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Output metadata of the compiled op: [B, Q, M * D] in value's dtype."""
    B, _, M, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], M * D))


def _fake_ms_deform_attn_backward(
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


def _ms_deform_attn_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _ms_deform_attn_backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
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


# Output metadata of every op, by name in the mask2former namespace.
_FAKES = {
    "ms_deform_attn": _fake_ms_deform_attn,
    "ms_deform_attn_backward": _fake_ms_deform_attn_backward,
    "sample_shared_points": _fake_sample_shared_points,
    "sigmoid_and_sums": _fake_sigmoid_and_sums,
    "group_norm_backward_channels_last": _fake_group_norm_backward,
    "attention": _fake_attention,
    "attention_backward": _fake_attention_backward,
}


def load_extension() -> ModuleType | None:
    """Load `mask2former._C` once and register autograd and the fake kernels of its ops.

    Returns the module, or None when the extension is not built. An extension that exists but fails to
    load (e.g. built against another torch) raises ImportError with the command that rebuilds it.
    """
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    if importlib.util.find_spec(EXTENSION) is not None:
        try:
            module = importlib.import_module(EXTENSION)
        except ImportError as err:
            raise ImportError(f"{EXTENSION} is installed but does not load ({err}); re-{BUILD_HINT}") from err
        if not module.WITH_OPENMP and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
            warnings.warn(
                f"{EXTENSION} was built without OpenMP, so its CPU kernels run on one thread; re-{BUILD_HINT}",
                RuntimeWarning,
                stacklevel=2,
            )
        for name, fake in _FAKES.items():
            torch.library.register_fake(f"mask2former::{name}")(fake)
        torch.library.register_autograd(
            "mask2former::ms_deform_attn",
            _ms_deform_attn_backward,
            setup_context=_ms_deform_attn_setup_context,
        )
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
