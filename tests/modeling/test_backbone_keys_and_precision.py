"""MODEL.RESNETS.{STEM_TYPE, RES4_DILATION, RES5_DILATION, RES5_MULTI_GRID} build what they name,
and float16 requested for a CPU (SOLVER.AMP, MODEL.INFERENCE_DTYPE) runs in bfloat16 with one
warning, the precision in use being logged."""

from __future__ import annotations

import logging

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.modeling import build_model
from mask2former.modeling.backbone.resnet import DeepLabStem, build_resnet_backbone
from mask2former.utils import precision
from mask2former.utils.testing import tiny_cfg


def _resnet(*overrides):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"], *overrides])
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_deeplab_stem_is_three_3x3_convs_with_stride_4():
    net = _resnet("MODEL.RESNETS.STEM_TYPE", "deeplab", "MODEL.RESNETS.STEM_OUT_CHANNELS", 128)
    stem = net.stem
    assert isinstance(stem, DeepLabStem)
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in (stem.conv1, stem.conv2, stem.conv3)
    ]
    assert convs == [(3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert stem(torch.zeros(1, 3, 64, 96)).shape == (1, 128, 16, 24)
    assert net.res2[0].conv1.in_channels == 128  # the stages follow the stem's width
    basic = _resnet("MODEL.RESNETS.STEM_TYPE", "basic")
    assert basic.stem.conv1.kernel_size == (7, 7)
    # conv weights (the default FrozenBN has buffers only): 7x7x3x64 against 3x3 x (3x32 + 32x32 + 32x64)
    deeplab64 = _resnet("MODEL.RESNETS.STEM_TYPE", "deeplab")
    assert sum(p.numel() for p in basic.stem.parameters()) == 49 * 3 * 64
    assert sum(p.numel() for p in deeplab64.stem.parameters()) == 9 * (3 * 32 + 32 * 32 + 32 * 64)
    with pytest.raises(ValueError, match="STEM_TYPE must be one of"):
        _resnet("MODEL.RESNETS.STEM_TYPE", "vit")


def test_dilation_and_multi_grid_keep_resolution_as_named():
    x = torch.zeros(1, 3, 64, 64)
    os16 = _resnet("MODEL.RESNETS.RES5_DILATION", 2, "MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4])
    assert os16(x)["res5"].shape[-2:] == (4, 4)
    assert [b.conv2.dilation[0] for b in os16.res5] == [2, 4, 8]
    os8 = _resnet("MODEL.RESNETS.RES4_DILATION", 2, "MODEL.RESNETS.RES5_DILATION", 4)
    assert os8(x)["res4"].shape[-2:] == (8, 8) and os8(x)["res5"].shape[-2:] == (8, 8)
    assert os8.output_shape()["res5"].stride == 8
    assert [b.conv2.dilation[0] for b in os8.res4] == [2] * 6
    plain = _resnet()  # multi-grid only scales a dilated res5
    assert [b.conv2.dilation[0] for b in plain.res5] == [1, 1, 1]
    with pytest.raises(ValueError, match="RES4_DILATION, RES5_DILATION"):
        _resnet("MODEL.RESNETS.RES4_DILATION", 2)
    with pytest.raises(ValueError, match="one factor per res5 block"):
        _resnet("MODEL.RESNETS.RES5_DILATION", 2, "MODEL.RESNETS.RES5_MULTI_GRID", [1, 2])


def test_float16_on_the_cpu_runs_bfloat16_with_one_warning(caplog):
    precision._warn_once.cache_clear()
    caplog.set_level(logging.INFO)
    cfg = tiny_cfg()
    cfg.merge_from_list(["MODEL.INFERENCE_DTYPE", "float16"])
    model = build_model(cfg)
    build_model(cfg)
    assert model.inference_dtype == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if "emulates" in r.getMessage()]
    assert len(warnings) == 1 and "MODEL.INFERENCE_DTYPE" in warnings[0] and "bfloat16" in warnings[0]
    assert any("Inference precision: torch.bfloat16 autocast" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        out = model.eval()([{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}])[0]
    assert out["sem_seg"].dtype == torch.float32

    from mask2former.engine.trainer import amp_dtype

    cfg.merge_from_list(["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16"])
    assert amp_dtype(cfg) == torch.bfloat16
    assert amp_dtype(cfg) == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if "emulates" in r.getMessage()]
    assert len(warnings) == 2 and "SOLVER.AMP.PRECISION" in warnings[1]
    assert precision.autocast_dtype("float16", "cuda", "X") == torch.float16
    with pytest.raises(ValueError, match="MODEL.INFERENCE_DTYPE must be one of"):
        precision.autocast_dtype("half", "cpu", "MODEL.INFERENCE_DTYPE")
