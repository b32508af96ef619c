"""GroupNorm whose CPU training backward for channels-last inputs runs a compiled kernel.

PyTorch's CPU backward of group_norm takes a slow path for channels-last inputs, which the pixel
decoder's norms get from the channels-last ResNet: 4.0 ms for [1, 256, 96, 96] in bfloat16 on 2
threads of this project's development machine, against 0.6 ms for the same tensor channel-first.
`GroupNorm` keeps PyTorch's forward (`native_group_norm`, which also returns the groups' mean and
1 / std) and computes the backward with `mask2former::group_norm_backward_channels_last` (two passes
along the channels; see csrc/cpu/group_norm_cpu.cpp). Everything else (other layouts and devices, no
gradient, tracing or compiling, no compiled op) runs `F.group_norm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .extension import compiled_op_available
from .weight_cache import graph_capture_active

__all__ = ["GroupNorm"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _channels_last_backward(x: Tensor, weight: Tensor | None) -> bool:
    """Whether the compiled backward applies: a channels-last [N, C, H, W] CPU input recorded by autograd."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in _DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
        and torch.is_grad_enabled()
        and (x.requires_grad or (weight is not None and weight.requires_grad))
        and not graph_capture_active()
        and compiled_op_available("cpu")
    )


class _GroupNormChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
    ) -> Tensor:
        """x [N, C, H, W] channels-last -> group-normalised x, scaled and shifted per channel."""
        n, c, h, w = x.shape
        out, mean, rstd = torch.native_group_norm(
            x, weight, bias, n, c, h * w, groups, eps
        )  # mean, rstd [N, G]
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = torch.ops.mask2former.group_norm_backward_channels_last(
            grad, x, mean, rstd, weight, ctx.groups
        )
        affine_dtype = None if weight is None else weight.dtype
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight.to(affine_dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(affine_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and names) with the compiled backward for channels-last CPU inputs."""

    def forward(self, x: Tensor) -> Tensor:
        if _channels_last_backward(x, self.weight):
            return _GroupNormChannelsLast.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
