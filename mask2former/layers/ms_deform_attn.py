"""Multi-scale deformable attention (Zhu et al., Deformable DETR), the pixel decoder's core op.

Shape shorthand in this module:
    B  batch            S  flattened positions over all levels (sum of H_l * W_l)
    Q  queries          M  heads           D  channels per head
    L  levels           P  sampling points per head and level

Sampling locations are normalised to [0, 1] per level, (x, y) order; bilinear sampling treats the
feature map as zero outside (grid_sample with align_corners=False and zero padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch multi-scale deformable attention (one grid_sample per level).

    Args:
        value: [B, S, M, D]
        spatial_shapes: [L, 2] (H_l, W_l) per level
        sampling_locations: [B, Q, M, L, P, 2] in [0, 1], (x, y)
        attention_weights: [B, Q, M, L, P]
    Returns:
        [B, Q, M * D]
    """
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = value_per_level[level].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)  # [B*M, D, H, W]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*M, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)  # [B*M, 1, Q, L*P]
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Q]
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention: [B, S, M, D] values -> [B, Q, M * D].

    The one entry point the model calls; see `ms_deform_attn_reference` for the argument shapes.
    `level_start_index` [L] is the offset of each level in S.
    """
    return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
