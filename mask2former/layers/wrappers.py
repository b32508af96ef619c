"""Conv2d with an optional norm and activation, and the norm-name lookup used by configs.

The norm is a child module named `norm`, so a conv's parameters are saved as `conv1.weight`,
`conv1.norm.weight`, ... exactly as Detectron2 checkpoints name them."""

from __future__ import annotations

from collections.abc import Callable

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
    """nn.Conv2d followed by `norm` and `activation` when given."""

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
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


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
