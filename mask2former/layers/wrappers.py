"""Conv2d with an optional norm and activation, and the norm-name lookup used by configs.

The norm is a child module named `norm`, so a conv's parameters are saved as `conv1.weight`,
`conv1.norm.weight`, ... exactly as Detectron2 checkpoints name them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch_norm import FrozenBatchNorm2d

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "SyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """Norm layer by config name: "BN", "SyncBN", "FrozenBN", "GN" (32 groups) or "" for none."""
    if not norm:
        return None
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_NORMS)} or ''")
    return _NORMS[norm](channels)


class Conv2d(nn.Conv2d):
    """nn.Conv2d followed by `norm` and `activation` when given.

    At inference (no gradient; not tracing, exporting or compiling) a batch norm with fixed statistics
    is folded into the convolution: weight * scale and bias - mean * scale, scale = gamma / sqrt(var + eps),
    computed once and kept until a parameter or statistic changes (in the autocast dtype under autocast, so
    that the weight is not cast on every call). Results agree with conv-then-norm to rounding."""

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
        self._folded: tuple[tuple, Tensor, Tensor] | None = None  # (key, weight, bias), not saved

    def forward(self, x: Tensor) -> Tensor:
        if self._can_fold(x):
            weight, bias = self._folded_weight_and_bias(x)
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        else:
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _can_fold(self, x: Tensor) -> bool:
        norm = self.norm
        fixed_stats = isinstance(norm, FrozenBatchNorm2d) or (
            isinstance(norm, nn.BatchNorm2d | nn.SyncBatchNorm)
            and not norm.training
            and norm.running_mean is not None
        )
        return (
            fixed_stats
            and not torch.is_grad_enabled()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
        )

    def _folded_weight_and_bias(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norm = self.norm
        tensors = [
            t
            for t in (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
            if t is not None
        ]
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else self.weight.dtype
        key = (dtype, norm.eps, *((t.data_ptr(), t._version) for t in tensors))
        if self._folded is None or self._folded[0] != key:
            with torch.autocast(x.device.type, enabled=False):
                scale = torch.rsqrt(norm.running_var.float() + norm.eps)  # [C_out]
                if norm.weight is not None:
                    scale = scale * norm.weight.float()
                shift = -norm.running_mean.float() * scale
                if norm.bias is not None:
                    shift = shift + norm.bias.float()
                if self.bias is not None:
                    shift = shift + self.bias.float() * scale
                weight = self.weight.float() * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
            self._folded = (key, weight.to(dtype), shift.to(dtype))
        return self._folded[1], self._folded[2]


def c2_msra_fill(module: nn.Module) -> None:
    """He (fan-out) init for conv weights and zero bias, as Caffe2/Detectron2 ResNets use."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Module) -> None:
    """Xavier-uniform (a=1) init for conv weights and zero bias, as Detectron2's FPN uses."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
