import pytest
import torch

from mask2former.modeling import point_sampling
from mask2former.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
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
