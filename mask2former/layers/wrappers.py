"""Conv2d with an optional norm and activation, and the norm-name lookup used by configs.

The norm is a child module named `norm`, so a conv's parameters are saved as `conv1.weight`,
`conv1.norm.weight`, ... exactly as Detectron2 checkpoints name them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch_norm import FrozenBatchNorm2d
from .group_norm import GroupNorm
from .linear import linear, onednn_training_path
from .weight_cache import (
    cpu_autograd_records,
    graph_capture_active,
    inference_weights,
    preparing_weights_allowed,
)

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "SyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: GroupNorm(32, channels),
}


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """Norm layer by config name: "BN", "SyncBN", "FrozenBN", "GN" (32 groups) or "" for none."""
    if not norm:
        return None
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_NORMS)} or ''")
    return _NORMS[norm](channels)


class _FixedBatchNorm(Protocol):
    """What folding reads of a FrozenBatchNorm2d, or of a BatchNorm2d / SyncBatchNorm in eval mode
    with running statistics."""

    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor
    eps: float


class Conv2d(nn.Conv2d):
    """nn.Conv2d followed by `norm` and `activation` when given.

    At inference (no gradient; not tracing, exporting or compiling) a batch norm with fixed statistics
    is folded into the convolution (weight * scale, bias - mean * scale with scale = gamma / sqrt(var +
    eps)), and under autocast the weights are kept in the autocast dtype, so that they are not cast on
    every call; both are prepared once and redone when a parameter or statistic changes. Results agree
    with conv-then-norm to rounding."""

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        autocast = torch.is_autocast_enabled(x.device.type)
        fold = self._has_fixed_batch_norm()
        if preparing_weights_allowed() and (fold or autocast):
            dtype = torch.get_autocast_dtype(x.device.type) if autocast else self.weight.dtype
            weight, bias = self._inference_weight_and_bias(dtype, fold)
            x = self._conv(x, weight, bias)
            if self.norm is not None and not fold:
                x = self.norm(x)
        else:
            x = self._conv(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """F.conv2d, or on the CPU oneDNN called directly: for 1x1 kernels on one thread PyTorch
        otherwise takes its slower im2col + GEMM path. At inference oneDNN's convolution for every
        input. In float32 training (autograd records it), for channels-last inputs only (the
        ResNet's; for channel-first ones at 1/4 resolution oneDNN was slower): a 1x1 stride-1
        convolution as a oneDNN linear layer over the channels (forward and backward), other kernels as
        oneDNN's convolution. In training under CPU autocast a channels-last 1x1 stride-1 convolution
        with at least 128 input and output channels is a linear layer too (`_autocast_training_as_linear`)."""
        if (
            self._is_pointwise()
            and _channels_last(x)
            and (onednn_training_path(x, weight) or _autocast_training_as_linear(x, weight))
        ):
            # A 1x1 convolution is a linear layer over the channels, contiguous here: on oneDNN with its
            # backward as matrix products ([NHW, C] views), where PyTorch's convolution backward took its
            # im2col path for these shapes (300 of 1850 ms of an R50 384x384 float32 step on one thread)
            out = linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # [N, H, W, C_out]
            return out.permute(0, 3, 1, 2)  # [N, C_out, H, W], channels-last
        if (
            x.device.type == "cpu"
            and x.dtype == weight.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")  # else weight and input may need autocast's cast
            and (preparing_weights_allowed() or (_channels_last(x) and not graph_capture_active()))
            and torch.backends.mkldnn.is_available()
        ):
            return torch.ops.aten.mkldnn_convolution(
                x, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _is_pointwise(self) -> bool:
        """A 1x1 kernel at stride 1, without padding, dilation or groups."""
        return (
            tuple(self.kernel_size) == (1, 1)
            and tuple(self.stride) == (1, 1)
            and tuple(self.padding) == (0, 0)
            and self.groups == 1
        )

    def _has_fixed_batch_norm(self) -> bool:
        norm = self.norm
        return isinstance(norm, FrozenBatchNorm2d) or (
            isinstance(norm, nn.BatchNorm2d | nn.SyncBatchNorm)
            and not norm.training
            and norm.running_mean is not None
        )

    def _inference_weight_and_bias(self, dtype: torch.dtype, fold: bool) -> tuple[Tensor, Tensor | None]:
        norm = cast(_FixedBatchNorm, self.norm)  # read only when fold (_has_fixed_batch_norm() is true)

        def make() -> tuple[Tensor, Tensor | None]:
            if not fold:
                return self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)
            with torch.autocast(self.weight.device.type, enabled=False):
                scale = torch.rsqrt(norm.running_var.float() + norm.eps)  # [C_out]
                if norm.weight is not None:
                    scale = scale * norm.weight.float()
                shift = -norm.running_mean.float() * scale
                if norm.bias is not None:
                    shift = shift + norm.bias.float()
                if self.bias is not None:
                    shift = shift + self.bias.float() * scale
                weight = self.weight.float() * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
            return weight.to(dtype), shift.to(dtype)

        sources = [self.weight, self.bias]
        if fold:
            sources += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        return inference_weights(self, sources, dtype if not fold else (dtype, norm.eps), make)


def _autocast_training_as_linear(x: Tensor, weight: Tensor) -> bool:
    """Whether a 1x1 convolution of a channels-last input runs as a linear layer (autocast's bfloat16
    products): in training under CPU autocast, nothing tracing or compiling, at least 128 input and
    output channels. On 2 threads of this project's AMD development machine, forward and backward
    of R50's 1x1 convolutions from 128 to 2048 channels took 0.6-0.95x the convolution's time
    (0.39x for 2048 -> 512 channels at 12x12); its 64-channel ones at 96x96 ran slower as products
    (357 GF/s) and an R50 384x384 step with them was no faster than with convolutions, while with
    128 channels and up it was 5-10 ms faster (three interleaved 12-step runs)."""
    return (
        torch.is_autocast_enabled("cpu") and cpu_autograd_records(x, weight) and min(weight.shape[:2]) >= 128
    )


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def c2_msra_fill(module: nn.Conv2d | nn.Linear) -> None:
    """He (fan-out) init for conv weights and zero bias, as Caffe2/Detectron2 ResNets use."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Conv2d | nn.Linear) -> None:
    """Xavier-uniform (a=1) init for conv weights and zero bias, as Detectron2's FPN uses."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
