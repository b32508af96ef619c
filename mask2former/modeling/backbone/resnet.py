"""ResNet-18/34/50/101/152 with Detectron2's structure and parameter names.

Names: `stem.conv1`, `res{2..5}.{block}.conv{1,2,3}`, `.shortcut`, each conv with its `.norm`,
so Detectron2 / Mask2Former checkpoints (and torchvision weights converted to those names) load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import CfgNode
from ...layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, c2_msra_fill, get_norm
from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _conv(
    in_ch: int, out_ch: int, kernel: int, stride: int, norm: str, dilation: int = 1, groups: int = 1
) -> Conv2d:
    conv = Conv2d(
        in_ch,
        out_ch,
        kernel_size=kernel,
        stride=stride,
        padding=dilation * (kernel // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_ch),
    )
    c2_msra_fill(conv)
    return conv


class BasicStem(nn.Module):
    """7x7 stride-2 conv + norm + ReLU + 3x3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = _conv(in_channels, out_channels, 7, 2, norm)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Detectron2 DeepLab's stem: three 3x3 convs (stride 2, 1, 1; widths out/2, out/2, out),
    each + norm + ReLU, then a 3x3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm: str = "BN"):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = _conv(in_channels, out_channels // 2, 3, 2, norm)
        self.conv2 = _conv(out_channels // 2, out_channels // 2, 3, 1, norm)
        self.conv3 = _conv(out_channels // 2, out_channels, 3, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv3(F.relu_(self.conv2(F.relu_(self.conv1(x))))))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


_STEMS: dict[str, type[BasicStem | DeepLabStem]] = {"basic": BasicStem, "deeplab": DeepLabStem}


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__()
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride, norm) if in_channels != out_channels else None
        )
        self.conv1 = _conv(in_channels, out_channels, 3, stride, norm)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (grouped, dilated), 1x1 expand (ResNet-50 and deeper)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__()
        self.shortcut = (
            _conv(in_channels, out_channels, 1, stride, norm) if in_channels != out_channels else None
        )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride_1x1, norm)
        self.conv2 = _conv(
            bottleneck_channels, bottleneck_channels, 3, stride_3x3, norm, dilation, num_groups
        )
        self.conv3 = _conv(bottleneck_channels, out_channels, 1, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


Block = BasicBlock | BottleneckBlock


def _freeze(module: nn.Module) -> None:
    """Stop gradients and turn BatchNorm layers into FrozenBatchNorm2d (in place)."""
    for p in module.parameters():
        p.requires_grad_(False)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d | nn.SyncBatchNorm):
            if child.running_mean is None or child.running_var is None:
                raise ValueError(f"cannot freeze {name}: a BatchNorm without running statistics")
            frozen = FrozenBatchNorm2d(child.num_features)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            frozen.eps = child.eps
            setattr(module, name, frozen)
        else:
            _freeze(child)


class ResNet(Backbone):
    """Stem + stages res2..res5 (stopping at the last requested output)."""

    def __init__(
        self,
        stem: BasicStem | DeepLabStem,
        stages: list[list[Block]],
        out_features: list[str],
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        self._out_features = list(out_features)
        self._out_feature_strides = {"stem": 4}
        self._out_feature_channels = {"stem": stem.out_channels}
        self.stage_names: list[str] = []
        stride = 4
        for i, blocks in enumerate(stages):
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            stride *= _first_stride(blocks[0])
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = _out_channels(blocks[-1])
        for f in self._out_features:
            if f not in self._out_feature_channels:
                raise ValueError(
                    f"ResNet output feature {f!r} is not one of {list(self._out_feature_channels)}"
                )
        if freeze_at >= 1:
            _freeze(self.stem)
        for i, name in enumerate(self.stage_names):
            if freeze_at >= i + 2:
                _freeze(getattr(self, name))
        # NHWC convolutions are faster with oneDNN on CPU and with tensor cores on GPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, 3, H, W] -> {res_i: [B, C_i, H / 2^i, W / 2^i]}"""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet takes [B, 3, H, W] images, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def _first_stride(block: Block) -> int:
    convs = [block.conv1, block.conv2]
    return max(c.stride[0] for c in convs)


def _out_channels(block: Block) -> int:
    last = block.conv3 if isinstance(block, BottleneckBlock) else block.conv2
    return last.out_channels


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet from `MODEL.RESNETS.*` and `MODEL.BACKBONE.FREEZE_AT`. STEM_TYPE "basic" is the
    7x7 stem of torchvision / Detectron2, "deeplab" the three-3x3 stem of Detectron2's DeepLab;
    RES4_DILATION 2 (with RES5_DILATION 4) or RES5_DILATION 2 trade stride for dilation, and
    a dilated res5's blocks use RES5_DILATION x RES5_MULTI_GRID[i] (DeepLab v3's multi-grid)."""
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions are not supported")
    if r.STEM_TYPE not in _STEMS:
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE must be one of {sorted(_STEMS)}, got {r.STEM_TYPE!r}")
    if (r.RES4_DILATION, r.RES5_DILATION) not in ((1, 1), (1, 2), (2, 4)):
        raise ValueError(
            "MODEL.RESNETS.(RES4_DILATION, RES5_DILATION) must be (1, 1), (1, 2) or (2, 4) (output stride "
            f"32, 16, 8), got ({r.RES4_DILATION}, {r.RES5_DILATION})"
        )
    num_res5_blocks = _BLOCKS_PER_STAGE[depth][3]
    if depth in (18, 34):
        if r.RES2_OUT_CHANNELS != 64:
            raise ValueError(
                f"MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for ResNet-{depth}, got {r.RES2_OUT_CHANNELS}"
            )
        if r.RES5_DILATION != 1 or r.NUM_GROUPS != 1:
            raise ValueError(
                f"ResNet-{depth} (basic blocks, no dilation) supports neither RES4/RES5_DILATION != 1 "
                "nor NUM_GROUPS != 1"
            )
    # DeepLab v3's multi-grid scales the dilation of a dilated res5 (RES5_DILATION > 1).
    multi_grid = [int(g) for g in r.RES5_MULTI_GRID] if r.RES5_DILATION > 1 else [1] * num_res5_blocks
    if len(multi_grid) != num_res5_blocks:
        raise ValueError(
            f"MODEL.RESNETS.RES5_MULTI_GRID needs one factor per res5 block ({num_res5_blocks} for "
            f"ResNet-{depth}), got {list(r.RES5_MULTI_GRID)}"
        )
    stem = _STEMS[r.STEM_TYPE](input_shape.channels, r.STEM_OUT_CHANNELS, r.NORM)
    out_features = list(r.OUT_FEATURES)
    last_stage = (
        max(int(f[3:]) for f in out_features if f.startswith("res")) if out_features != ["stem"] else 1
    )
    in_ch, out_ch = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages: list[list[Block]] = []
    for stage_idx, num_blocks in zip(range(2, last_stage + 1), _BLOCKS_PER_STAGE[depth]):
        dilation = {4: r.RES4_DILATION, 5: r.RES5_DILATION}.get(stage_idx, 1)
        first_stride = 1 if stage_idx == 2 or dilation > 1 else 2
        blocks: list[Block] = []
        for i in range(num_blocks):
            stride = first_stride if i == 0 else 1
            block_dilation = dilation * multi_grid[i] if stage_idx == 5 else dilation
            if depth in (18, 34):
                blocks.append(BasicBlock(in_ch, out_ch, stride=stride, norm=r.NORM))
            else:
                blocks.append(
                    BottleneckBlock(
                        in_ch,
                        out_ch,
                        bottleneck_channels=bottleneck,
                        stride=stride,
                        num_groups=r.NUM_GROUPS,
                        norm=r.NORM,
                        stride_in_1x1=r.STRIDE_IN_1X1,
                        dilation=block_dilation,
                    )
                )
            in_ch = out_ch
        stages.append(blocks)
        out_ch *= 2
        bottleneck *= 2
    return ResNet(stem, stages, out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
