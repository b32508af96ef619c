"""Test-time augmentation (TEST.AUG.*): bookkeeping of scales and flips, flip equivariance,
the no-augmentation case against the plain model, and the evaluation through Trainer.test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mask2former.data.datasets.shapes import SceneConfig, generate_scene
from mask2former.modeling import build_model
from mask2former.modeling.test_time_augmentation import MaskFormerWithTTA, build_tta_model, query_agreement
from mask2former.utils.testing import tiny_cfg


def _image(h=64, w=80, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = generate_scene(SceneConfig(height=h, width=w, min_radius=6, max_radius=12), rng)[0]
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()  # [3, H, W] uint8 RGB


@pytest.fixture(scope="module")
def model():
    """Plain and TTA results both come from inference without gradients (as in evaluation):
    float32 CPU linears then take the same oneDNN path."""
    torch.manual_seed(0)
    m = build_model(tiny_cfg())
    m.object_mask_threshold = 0.0  # random weights: keep every query so panoptic has segments
    return m.eval()


@torch.no_grad()
def plain_inference(model, inputs: list[dict]) -> list[dict]:
    return model(inputs)


def _same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=0)
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
    for k in ("pred_masks", "scores", "pred_classes"):
        torch.testing.assert_close(
            getattr(a["instances"], k), getattr(b["instances"], k), rtol=1e-6, atol=1e-6
        )


def test_one_view_at_the_test_size_is_the_plain_result(model):
    x = {"image": _image(), "height": 96, "width": 120}  # output larger than the input, as in eval
    plain = plain_inference(model, [x])[0]
    tta = MaskFormerWithTTA(model, min_sizes=(64,), max_size=1000, flip=False)([x])[0]
    _same(plain, tta)
    assert len(plain["panoptic_seg"][1]) > 0


def test_flip_tta_is_flip_equivariant(model):
    """TTA(mirror(x)) = mirror(TTA(x)): with flip the two views of x and of mirror(x) are the
    same images, so the averages agree exactly (sums of two terms commute)."""
    x = _image(seed=3)
    tta = MaskFormerWithTTA(model, min_sizes=(64,), max_size=1000, flip=True)
    a = tta([{"image": x}])[0]
    b = tta([{"image": x.flip(-1)}])[0]
    torch.testing.assert_close(b["sem_seg"], a["sem_seg"].flip(-1), rtol=0, atol=0)
    assert torch.equal(b["panoptic_seg"][0], a["panoptic_seg"][0].flip(-1))
    assert b["panoptic_seg"][1] == a["panoptic_seg"][1]
    # multi-scale: resizing a mirrored image is the mirrored resize up to float rounding
    ms = MaskFormerWithTTA(model, min_sizes=(48, 64, 96), max_size=1000, flip=True)
    torch.testing.assert_close(
        ms([{"image": x.flip(-1)}])[0]["sem_seg"],
        ms([{"image": x}])[0]["sem_seg"].flip(-1),
        rtol=1e-4,
        atol=1e-5,
    )


def test_flip_tta_of_a_mirror_symmetric_image(model):
    """For an image equal to its mirror, flip TTA is the plain result averaged with its own mirror
    image: symmetric, and equal to the plain result wherever the plain result is symmetric."""
    half = _image(w=40, seed=4)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # [3, 64, 80], x == mirror(x)
    plain = plain_inference(model, [{"image": x}])[0]["sem_seg"]
    tta = MaskFormerWithTTA(model, min_sizes=(64,), max_size=1000, flip=True)([{"image": x}])[0]["sem_seg"]
    torch.testing.assert_close(tta, (plain + plain.flip(-1)) / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(tta, tta.flip(-1), rtol=0, atol=0)
    assert not torch.allclose(plain, plain.flip(-1))  # the network itself is not mirror-equivariant


class PerPixelColourModel(nn.Module):
    """A mirror-equivariant semantic model: each pixel's class scores are a fixed function of its
    colour (as a 1x1 convolution is), so flip TTA of any input must give the plain result."""

    semantic_on, panoptic_on, instance_on = True, False, False

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            s = self.proj(x["image"].float()[None] / 255).softmax(1)
            h, w = x.get("height", s.shape[-2]), x.get("width", s.shape[-1])
            out.append({"sem_seg": nn.functional.interpolate(s, size=(h, w), mode="bilinear")[0]})
        return out


def test_flip_tta_of_an_equivariant_model_equals_the_plain_result():
    torch.manual_seed(0)
    model = PerPixelColourModel()
    half = _image(w=40, seed=5)
    for x in (torch.cat([half, half.flip(-1)], dim=-1), _image(seed=6)):
        plain = plain_inference(model, [{"image": x}])[0]["sem_seg"]
        tta = MaskFormerWithTTA(model, min_sizes=(64,), max_size=1000, flip=True)([{"image": x}])[0]
        torch.testing.assert_close(tta["sem_seg"], plain, rtol=0, atol=1e-7)


def test_scales_follow_the_output_size_and_change_the_result(model):
    cfg = tiny_cfg()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", (32, 64, 96), "TEST.AUG.MAX_SIZE", 100])
    tta = build_tta_model(cfg, model)
    x = _image()
    sizes = [tuple(v.shape[-2:]) for v, _ in tta.views(x, (128, 160))]  # output twice the input
    assert sizes == [(32, 40), (32, 40), (64, 80), (64, 80), (80, 100), (80, 100)]  # long edge <= 100
    plain = plain_inference(model, [{"image": x}])[0]["sem_seg"]
    multi = tta([{"image": x}])[0]["sem_seg"]
    assert multi.shape == plain.shape
    assert (multi - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="MIN_SIZES"):
        MaskFormerWithTTA(model, min_sizes=(), max_size=100, flip=True)


def test_query_agreement_of_the_same_view_is_perfect(model):
    x = {"image": _image()}
    same = MaskFormerWithTTA(model, min_sizes=(64, 64), max_size=1000, flip=False)
    r = query_agreement(model, same, x, score_threshold=0.0)
    assert r["queries"] > 0 and r["same_query_iou"] == 1.0 and r["same_class"] == 1.0
