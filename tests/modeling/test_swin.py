"""Swin backbone: shapes at odd sizes, parameter names and counts of the original's variants,
parity with timm's Swin at an aligned size, and the config builder."""

import math
import re

import pytest
import timm
import torch

from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    SwinTransformer,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from mask2former.modeling.registry import BACKBONE_REGISTRY

# The original's Swin variants as its configs set them (MODEL.SWIN.*).
VARIANTS = {
    "T": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "S": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "B": dict(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, pretrain_img_size=384
    ),
    "L": dict(
        embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, pretrain_img_size=384
    ),
}
# Backbone share of the original's models. Derived from shared/reference/param_counts.md, e.g. Swin-T:
# coco panoptic Swin-T 47435264 - R50 43983878 + R50 backbone with FrozenBN (23508032 - 53120 BN affine
# params, which FrozenBN keeps as buffers) + the pixel decoder's input projections and res2 lateral that
# depend on the backbone's channels (256 * ((2048 + 1024 + 512 + 256) - (768 + 384 + 192 + 96)) = 614400).
# Swin-L's configs use 200 queries (query_feat + query_embed: 512 params per extra query), see test_model_zoo_configs.
BACKBONE_PARAMS = {"T": 27520698, "S": 48838602, "B": 86880376, "L": 195201204}
# Only buffers: one int64 relative_position_index [w^2, w^2] per block.
BACKBONE_BUFFERS = {"T": 12 * 49**2, "S": 24 * 49**2, "B": 24 * 144**2, "L": 24 * 144**2}


def _meta_swin(**kw) -> SwinTransformer:
    with torch.device("meta"):
        return SwinTransformer(**kw)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_param_and_buffer_counts(name):
    m = _meta_swin(**VARIANTS[name])
    assert sum(p.numel() for p in m.parameters()) == BACKBONE_PARAMS[name]
    assert sum(b.numel() for b in m.buffers()) == BACKBONE_BUFFERS[name]


def test_parameter_names_are_the_originals():
    m = _meta_swin(**VARIANTS["T"])
    names = set(m.state_dict())
    expected = {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "patch_embed.norm.weight",
        "patch_embed.norm.bias",
    }
    for i, depth in enumerate(VARIANTS["T"]["depths"]):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            expected |= {
                p + "norm1.weight",
                p + "norm1.bias",
                p + "attn.relative_position_bias_table",
                p + "attn.relative_position_index",
                p + "attn.qkv.weight",
                p + "attn.qkv.bias",
                p + "attn.proj.weight",
                p + "attn.proj.bias",
                p + "norm2.weight",
                p + "norm2.bias",
                p + "mlp.fc1.weight",
                p + "mlp.fc1.bias",
                p + "mlp.fc2.weight",
                p + "mlp.fc2.bias",
            }
        if i < 3:
            expected |= {f"layers.{i}.downsample.reduction.weight", f"layers.{i}.downsample.norm.weight"}
            expected |= {f"layers.{i}.downsample.norm.bias"}
        expected |= {f"norm{i}.weight", f"norm{i}.bias"}
    assert names == expected
    # relative_position_index is a persistent buffer (it is in the original's checkpoints)
    assert "layers.0.blocks.0.attn.relative_position_index" not in dict(m.named_parameters())


@pytest.mark.parametrize("window", [7, 12])
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 250)])
def test_output_shapes_any_size(window, size):
    torch.manual_seed(0)
    m = SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=window).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = m(x)
    shapes = m.output_shape()
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        spec = shapes[name]
        assert spec.stride == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}[name]
        assert spec.channels == 16 * spec.stride // 4
        assert feat.shape == (
            2,
            spec.channels,
            math.ceil(size[0] / spec.stride),
            math.ceil(size[1] / spec.stride),
        )
        assert torch.isfinite(feat).all()


def test_padding_does_not_leak_into_valid_region_of_first_block():
    """The same image, alone or as the top-left of a larger zero image, gives the same first-stage
    patch embedding: the padding is on the right/bottom only."""
    m = SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7).eval()
    x = torch.randn(1, 3, 30, 45)
    big = torch.zeros(1, 3, 32, 48)
    big[..., :30, :45] = x
    with torch.no_grad():
        torch.testing.assert_close(m.patch_embed(x), m.patch_embed(big))


def test_batch_elements_are_independent():
    torch.manual_seed(0)
    m = SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7).eval()
    x = torch.randn(3, 3, 61, 83)
    with torch.no_grad():
        batched = m(x)
        single = m(x[1:2])
    for name in batched:
        torch.testing.assert_close(batched[name][1:2], single[name], rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    m = SwinTransformer(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7, ape=True)
    out = m(torch.randn(1, 3, 70, 90))
    sum(o.sum() for o in out.values()).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"


def test_out_features_subset_builds_only_needed_stages():
    m = SwinTransformer(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], out_features=["res3", "res4"]
    )
    assert len(m.layers) == 3 and m.layers[2].downsample is None
    assert not hasattr(m, "norm0") and hasattr(m, "norm1") and hasattr(m, "norm2")
    out = m(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res3", "res4"]
    assert set(m.output_shape()) == {"res3", "res4"}
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        SwinTransformer(out_features=["res6"])


def test_window_helpers():
    x = torch.randn(2, 14, 21, 5)
    w = window_partition(x, 7)
    assert w.shape == (2 * 2 * 3, 7, 7, 5)
    torch.testing.assert_close(w[1], x[0, 0:7, 7:14])  # windows are batch-major, row-major
    torch.testing.assert_close(window_reverse(w, 7, 14, 21), x)
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.dtype == torch.int64
    assert idx.min() == 0 and idx.max() == 24 and (idx.diagonal() == 12).all()  # (0, 0) offset is the centre
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_matches_timm_swin_at_aligned_size():
    """At 224x224 (no padding) every stage output equals timm's Swin-T with the same weights,
    followed by our per-stage LayerNorm. timm places each PatchMerging at the start of the next
    stage, and on a grid no larger than the window (res5 here: 7x7, window 7) it drops the shift,
    which the original's detection backbone keeps: res5 is compared with that one shift removed."""
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, pretrained=False).eval()
    ours = SwinTransformer(**VARIANTS["T"]).eval()
    converted = {}
    for k, v in ref.state_dict().items():
        m = re.match(r"layers_(\d+)\.(.*)", k)
        if m is None:
            converted[k] = v
        elif m.group(2).startswith("downsample."):
            converted[f"layers.{int(m.group(1)) - 1}.{m.group(2)}"] = v
        else:
            converted[f"layers.{m.group(1)}.{m.group(2)}"] = v
    missing, unexpected = ours.load_state_dict(converted, strict=False)
    assert all(re.fullmatch(r"norm\d\.(weight|bias)|.*relative_position_index", k) for k in missing), missing
    assert not unexpected
    for i in range(4):  # non-trivial norms so the check covers them too
        torch.nn.init.normal_(getattr(ours, f"norm{i}").weight)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)  # NHWC
        got = ours(x)
        ours.layers[3].blocks[1].shift_size = 0
        got_unshifted = ours(x)["res5"]
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        want = getattr(ours, f"norm{i}")(expected[i]).permute(0, 3, 1, 2)
        if name == "res5":
            assert not torch.allclose(got[name], want, atol=1e-2)  # the original shifts here
            torch.testing.assert_close(got_unshifted, want, rtol=1e-4, atol=1e-4)
        else:
            torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-4)


def test_builder_reads_config():
    assert BACKBONE_REGISTRY.get("D2SwinTransformer") is D2SwinTransformer
    cfg = get_cfg()
    cfg.MODEL.SWIN.EMBED_DIM = 32
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 4, 8]
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res5"]
    m = D2SwinTransformer(cfg, ShapeSpec(channels=3))
    assert m.output_shape() == {"res2": ShapeSpec(32, 4), "res5": ShapeSpec(256, 32)}
    assert m.layers[0].blocks[1].attn.relative_position_bias_table.shape == (23 * 23, 1)
    assert m.layers[0].blocks[1].shift_size == 6
    assert m.size_divisibility == 32
