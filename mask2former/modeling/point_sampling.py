"""Point sampling (PointRend, Kirillov et al.): read maps at continuous points, pick uncertain points.

Shape shorthand in this module:
    N  masks (or images)      C  channels       H, W  map size
    P  sampled points         M  candidate points (oversampled)

Point coordinates are normalised to [0, 1] over the whole map, (x, y) order; values are read
bilinearly with `grid_sample(align_corners=False)` and zero padding, as the original does for both
predicted logits and target masks.

Every uniform random draw goes through `uniform_points`, so a test can replace that one function
and replay recorded draws in order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.extension import compiled_op_available

__all__ = [
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "point_sample",
    "sample_shared_points",
    "uniform_points",
]


def uniform_points(shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Uniform random numbers in [0, 1) of `shape`: the single source of randomness here.

    Args:
        shape: e.g. (N, P, 2) for N sets of P points.
        device, dtype: of the result.
    Returns:
        Tensor of `shape`.
    """
    return torch.rand(shape, device=device, dtype=dtype)


def point_sample(input: Tensor, point_coords: Tensor, **grid_sample_kwargs) -> Tensor:
    """Sample `input` at normalised points (a `grid_sample` wrapper taking [0, 1] coordinates).

    Args:
        input: [N, C, H, W] maps.
        point_coords: [N, P, 2] points in [0, 1], (x, y) order; or [N, Hg, Wg, 2] for a grid. A leading
            size of 1 shares the points with all N maps (expanded as a view, not copied).
        grid_sample_kwargs: passed to `F.grid_sample` (`align_corners`, `mode`, `padding_mode`).
            The original always passes `align_corners=False`, which is also the default here.
    Returns:
        [N, C, P] for [N, P, 2] points, or [N, C, Hg, Wg] for a grid.
    """
    if input.dim() != 4:
        raise ValueError(f"point_sample expects input [N, C, H, W], got shape {tuple(input.shape)}")
    if point_coords.dim() not in (3, 4) or point_coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects point_coords [N, P, 2] or [N, Hg, Wg, 2], got {tuple(point_coords.shape)}"
        )
    if point_coords.shape[0] not in (1, input.shape[0]):
        raise ValueError(
            f"point_sample: input has {input.shape[0]} maps but point_coords has {point_coords.shape[0]}"
        )
    grid_sample_kwargs.setdefault("align_corners", False)
    add_dim = point_coords.dim() == 3
    grid = 2.0 * point_coords - 1.0  # [N, P, 2] in [-1, 1]
    if add_dim:
        grid = grid.unsqueeze(2)  # [N, P, 1, 2]
    grid = grid.expand(input.shape[0], *grid.shape[1:])
    output = F.grid_sample(input, grid.to(input.dtype), **grid_sample_kwargs)  # [N, C, P, 1]
    if add_dim:
        output = output.squeeze(3)  # [N, C, P]
    return output


def sample_shared_points(maps: Tensor, point_coords: Tensor) -> Tensor:
    """Read N one-channel maps at the same points, without gradient (the matcher's reading of all
    of an image's masks at one draw of points).

    Args:
        maps: [N, H, W].
        point_coords: [1, P, 2] points in [0, 1], (x, y) order.
    Returns:
        [N, P], the values of `point_sample(maps[:, None], point_coords)[:, 0]`. Float32 maps on the
        CPU are read by the compiled `mask2former::sample_shared_points`, which computes each point's
        corners and weights once for all maps and reads one whole map at a time per thread (0.7
        against 1.5 ms for 100 maps of 96x96 at 12544 points on 2 threads); results agree with
        grid_sample's to float32 rounding of the point positions.
    """
    recorded = torch.is_grad_enabled() and maps.requires_grad
    if (
        maps.device.type == "cpu"
        and maps.dtype == torch.float32
        and not recorded
        and compiled_op_available("cpu")
    ):
        return torch.ops.mask2former.sample_shared_points(maps, point_coords[0])
    return point_sample(maps[:, None], point_coords, align_corners=False)[:, 0]


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of mask logits: -|logit|, highest where the logit is closest to 0.

    Args:
        logits: [N, 1, ...] class-agnostic mask logits.
    Returns:
        Tensor of the same shape.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty expects one channel, got shape {tuple(logits.shape)}")
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_func: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Tensor:
    """Points for the mask loss: the most uncertain of oversampled candidates, plus uniform points.

    Draws M = int(num_points * oversample_ratio) uniform candidates per mask ([N, M, 2]), keeps the
    int(importance_sample_ratio * num_points) with the highest uncertainty, then appends a second
    uniform draw ([N, num_points - kept, 2]) when that count is positive.

    Args:
        coarse_logits: [N, 1, H, W] mask logits.
        uncertainty_func: maps [N, 1, P] logits to [N, 1, P] uncertainties (higher = less certain).
        num_points: P, points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
    Returns:
        [N, P, 2] point coordinates in [0, 1], (x, y) order.
    """
    if coarse_logits.dim() != 4 or coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must be [N, 1, H, W], got shape {tuple(coarse_logits.shape)}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    device, dtype = coarse_logits.device, torch.float32  # coordinates stay fp32 under autocast
    num_sampled = int(num_points * oversample_ratio)
    point_coords = uniform_points((num_masks, num_sampled, 2), device, dtype)  # [N, M, 2]
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)  # [N, 1, M]
    point_uncertainties = uncertainty_func(point_logits)  # [N, 1, M]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    # The most uncertain points as a set (their order only changes the summation order of the point
    # losses); unsorted, the CPU's topk takes a third of the time.
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1, sorted=False)[
        1
    ]  # [N, num_uncertain]
    point_coords = torch.gather(point_coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # [N, num_uncertain, 2]
    if num_random > 0:
        random_coords = uniform_points((num_masks, num_random, 2), device, dtype)  # [N, num_random, 2]
        point_coords = torch.cat([point_coords, random_coords], dim=1)  # [N, P, 2]
    return point_coords
