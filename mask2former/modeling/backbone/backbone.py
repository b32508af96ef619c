"""Backbone interface: an nn.Module mapping images [B, 3, H, W] to named feature maps."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from torch import Tensor, nn

from ...layers import ShapeSpec


class Backbone(nn.Module, metaclass=ABCMeta):
    """Subclasses set `_out_features`, `_out_feature_channels` and `_out_feature_strides`
    (feature name -> int) and implement `forward(x) -> dict[str, Tensor]`."""

    _out_features: list[str]
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, 3, H, W] -> {name: [B, C_name, H / stride_name, W / stride_name]}"""

    @property
    def size_divisibility(self) -> int:
        """Input sizes must be multiples of this (0: any size)."""
        return 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
