import pytest
import torch

from mask2former.layers.extension import compiled_op_available
from mask2former.modeling import point_sampling
from mask2former.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sample_shared_points,
)


def test_point_sample_reads_pixel_centres():
    h, w = 3, 5
    image = torch.arange(2 * h * w, dtype=torch.float32).reshape(1, 2, h, w)  # [1, 2, H, W]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # Pixel (y, x) has its centre at ((x + 0.5) / W, (y + 0.5) / H) with align_corners=False.
    coords = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], dim=-1)[None]  # [1, HW, 2]
    out = point_sample(image, coords)  # [1, 2, HW]
    torch.testing.assert_close(out, image.flatten(2))


def test_point_sample_bilinear_and_zero_padding():
    image = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])  # [1, 1, 2, 2]
    coords = torch.tensor([[[0.5, 0.5], [0.5, 0.25], [0.0, 0.25]]])  # [1, 3, 2]
    out = point_sample(image, coords, align_corners=False)
    # Centre: mean of all four. (0.5, 0.25): midway between 0 and 4. (0.0, 0.25): half of 0 and pad.
    torch.testing.assert_close(out, torch.tensor([[[6.0, 2.0, 0.0]]]))


def test_point_sample_grid_form_and_errors():
    image = torch.randn(2, 3, 4, 4)
    grid = torch.rand(2, 5, 6, 2)
    assert point_sample(image, grid).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError, match="point_coords"):
        point_sample(image, torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="maps"):
        point_sample(image, torch.rand(3, 5, 2))


@pytest.mark.parametrize("coords_shape", [(1, 7, 2), (1, 3, 4, 2)], ids=["points", "grid"])
def test_point_sample_shares_one_set_of_points_with_all_maps(coords_shape):
    image = torch.randn(4, 2, 5, 6)
    coords = torch.rand(coords_shape)
    shared = point_sample(image, coords)
    repeated = point_sample(image, coords.repeat(4, *([1] * (coords.dim() - 1))))
    torch.testing.assert_close(shared, repeated, rtol=0, atol=0)
    for i in range(4):
        torch.testing.assert_close(shared[i : i + 1], point_sample(image[i : i + 1], coords), rtol=0, atol=0)


def test_uncertain_points_keep_most_uncertain_then_random(monkeypatch):
    # Logits = x coordinate - 0.5: uncertainty is highest for candidates with x closest to 0.5.
    logits = (torch.linspace(0, 1, 64) - 0.5).expand(1, 1, 64, 64).contiguous()  # [1, 1, 64, 64]
    candidates = torch.tensor([[[0.1, 0.2], [0.49, 0.3], [0.9, 0.9], [0.52, 0.7], [0.3, 0.3], [0.7, 0.1]]])
    extra = torch.tensor([[[0.11, 0.22]]])
    draws = [candidates, extra]

    def replay(shape, device, dtype):
        t = draws.pop(0)
        assert tuple(shape) == tuple(t.shape)
        return t.to(device, dtype)

    monkeypatch.setattr(point_sampling, "uniform_points", replay)
    coords = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, num_points=2, oversample_ratio=3.0, importance_sample_ratio=0.5
    )
    torch.testing.assert_close(coords, torch.tensor([[[0.49, 0.3], [0.11, 0.22]]]))
    assert not draws


def test_uncertain_points_shapes_without_random_part():
    logits = torch.randn(3, 1, 8, 8)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 10, 2.0, 1.0)
    assert coords.shape == (3, 10, 2)
    assert coords.dtype == torch.float32
    assert bool((coords >= 0).all() and (coords <= 1).all())
    with pytest.raises(ValueError, match="coarse_logits"):
        get_uncertain_point_coords_with_randomness(
            torch.randn(3, 2, 8, 8), calculate_uncertainty, 10, 2.0, 1.0
        )


@pytest.mark.parametrize("size", [(96, 96), (7, 5), (1, 1)])
def test_sample_shared_points_compiled_matches_grid_sample(size):
    """The compiled CPU reader against grid_sample (align_corners=False, zero padding), with points on the
    borders and corners of the map where corners fall outside."""
    assert compiled_op_available("cpu"), "mask2former._C is not built"
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(9, *size, generator=generator)  # [N, H, W]
    points = torch.rand(1, 500, 2, generator=generator)
    points[0, :6] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.999, 0.001]])
    got = sample_shared_points(maps, points)
    expected = point_sample(maps[:, None].double(), points.double())[:, 0]  # [N, P]
    assert got.shape == (9, 500) and got.dtype == torch.float32
    # float32 rounding of the point positions (about 1e-5 of a pixel at 96) against float64
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_sample_shared_points_fallbacks_and_checks():
    maps = torch.randn(4, 6, 8)
    points = torch.rand(1, 30, 2)
    expected = point_sample(maps[:, None], points)[:, 0]
    for variant in (maps.double(), maps.clone().requires_grad_()):  # float64, or recorded by autograd
        got = sample_shared_points(variant, points)
        torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)
        assert got.requires_grad == variant.requires_grad
    with pytest.raises(RuntimeError, match="points must be float32"):
        torch.ops.mask2former.sample_shared_points(maps, points[0].double())
    with pytest.raises(RuntimeError, match=r"maps must be float32 \[N, H, W\]"):
        torch.ops.mask2former.sample_shared_points(maps[None], points[0])
    torch.library.opcheck(torch.ops.mask2former.sample_shared_points, (maps, points[0]))
