from .batch_norm import FrozenBatchNorm2d
from .group_norm import GroupNorm
from .linear import Linear, linear
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_reference
from .position_encoding import PositionEmbeddingSine
from .shape_spec import ShapeSpec
from .wrappers import Conv2d, c2_msra_fill, c2_xavier_fill, get_norm

__all__ = [
    "Conv2d",
    "FrozenBatchNorm2d",
    "GroupNorm",
    "Linear",
    "PositionEmbeddingSine",
    "ShapeSpec",
    "c2_msra_fill",
    "c2_xavier_fill",
    "get_norm",
    "linear",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
