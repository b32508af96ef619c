"""Linear layers that run on oneDNN in float32 and bfloat16 CPU inference.

PyTorch sends float32 `F.linear` on the CPU to MKL's sgemm, which on some CPUs (AMD's, where MKL
takes a generic code path) runs at less than half the speed of oneDNN's kernels, and adds the bias
in a separate pass. `linear` calls oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the op
PyTorch's own compiler uses for CPU linears) with the bias and an optional ReLU fused, where nothing
else needs `F.linear`: CPU tensors in float32 without autocast, or input and weight both in bfloat16
(as `Linear` passes them under bfloat16 autocast: the fused ReLU saves a pass that `F.linear` then
`relu` make), no gradient, not while tracing or exporting (those record the portable `aten::linear`) and not
under torch.compile (whose lowering of the oneDNN op wants the weights frozen into the graph).
Results agree with `F.linear` to float32 rounding (a different summation order).

In float32 CPU training (autograd records the call, no autocast) `linear` runs `_OneDNNLinear`: the
forward and the three products of its backward on oneDNN as well. MKL's sgemm reached 83-99 GFLOP/s
on this project's AMD development machine for the pixel decoder's feed-forward shapes, oneDNN
147-235 GFLOP/s. The weight gradient runs oneDNN's inner-product backward-weights primitive, which reads
the gradient and the input as they are stored: computing it as a product of their transposes paid for
two transposed copies, which PyTorch makes on one thread.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weight_cache import cpu_autograd_records, inference_weights, preparing_weights_allowed

__all__ = ["Linear", "linear"]

_ACTIVATIONS = ("none", "relu")


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    # No gradient, tracing, exporting or compiling, checked first: torch.compile cannot trace the
    # availability checks below (a graph break at every call, and a recompilation per weight shape).
    if not preparing_weights_allowed() or x.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    if x.dtype == torch.float32:
        return not torch.is_autocast_enabled("cpu")  # else F.linear runs in the autocast dtype
    return x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def onednn_training_path(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear(x, weight)` runs `_OneDNNLinear`: float32 on the CPU, recorded by autograd, no
    autocast, nothing tracing or compiling."""
    return (
        x.dtype == weight.dtype == torch.float32
        and cpu_autograd_records(x, weight)
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
    )


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")


class _OneDNNLinear(torch.autograd.Function):
    """`linear` in float32 CPU training: forward and backward products on oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
        """x [..., C_in], weight [C_out, C_in], bias [C_out] -> [..., C_out]"""
        out = _onednn_linear(x, weight, bias, activation)
        ctx.relu = activation == "relu"
        ctx.save_for_backward(x, weight, out if ctx.relu else None)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, out = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_2d = grad.reshape(-1, weight.shape[0])  # [N, C_out]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad [N, C_out] x weight [C_out, C_in], read as a transposed view
            grad_x = _onednn_linear(grad_2d, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:  # grad^T [C_out, N] x x [N, C_in], and the bias's sum over N alongside
            x_2d = x.reshape(-1, weight.shape[1])
            grad_weight, bias_sum = torch.ops.aten.mkldnn_linear_backward_weights(
                grad_2d.to_mkldnn(), x_2d.to_mkldnn(), weight, ctx.needs_input_grad[2]
            )
            grad_bias = bias_sum if ctx.needs_input_grad[2] else None
        elif ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0)
        return grad_x, grad_weight, grad_bias, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    """x [..., C_in], weight [C_out, C_in], bias [C_out] -> activation(x weight^T + bias) [..., C_out];
    `activation` is "none" or "relu"."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if _use_onednn(x, weight):
        return _onednn_linear(x, weight, bias, activation)
    if onednn_training_path(x, weight):
        return _OneDNNLinear.apply(x, weight, bias, activation)
    y = F.linear(x, weight, bias)
    return F.relu(y) if activation == "relu" else y


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) computed by `linear`, with an optional fused ReLU. Under
    autocast at inference the weights are kept in the autocast dtype (cast once, again when they change)."""

    def forward(self, x: Tensor, activation: str = "none") -> Tensor:
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type) and preparing_weights_allowed():
            dtype = torch.get_autocast_dtype(x.device.type)
            weight, bias = inference_weights(
                self,
                [self.weight, self.bias],
                dtype,
                lambda: (self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)),
            )
            x = x.to(dtype)  # what autocast would do; lets `linear` take oneDNN's bfloat16 path
        return linear(x, weight, bias, activation)
