from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """What one stage tells the next about a feature map: channels and stride (input pixels per
    feature pixel). Backbones return `dict[str, ShapeSpec]` from `output_shape()`."""

    channels: int
    stride: int = 1
