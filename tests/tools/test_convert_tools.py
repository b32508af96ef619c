"""tools/convert_torchvision_resnet.py and tools/convert_swin.py on small fake checkpoints in the
formats of torchvision and of the official Swin release."""

from __future__ import annotations

import importlib.util
import pickle

import pytest
import timm
import torch
import torchvision

from mask2former.checkpoint import load_state_dict_file, load_weights
from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.modeling.backbone.resnet import build_resnet_backbone
from mask2former.modeling.backbone.swin import SwinTransformer
from mask2former.utils.testing import TOOLS


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_resnet = _tool("convert_torchvision_resnet")
convert_swin = _tool("convert_swin")


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def test_resnet_names_and_outputs_match_torchvision(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    _randomise_bn(tv)
    src = tmp_path / "resnet50-0676ba61.pth"
    torch.save(tv.state_dict(), src)
    out = tmp_path / "R-50.pkl"
    assert convert_resnet.main([str(src), str(out)]) == 0
    assert "16 residual blocks" in capsys.readouterr().out

    with open(out, "rb") as f:
        raw = pickle.load(f)
    assert raw["__author__"] == "torchvision" and raw["matching_heuristics"] is True
    names = set(raw["model"])
    for expected in [
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "stem.conv1.norm.bias",
        "stem.conv1.norm.running_mean",
        "stem.conv1.norm.running_var",
        "res2.0.conv1.weight",
        "res2.0.conv1.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.bias",
        "res5.2.conv3.weight",
        "res5.2.conv3.norm.running_mean",
    ]:
        assert expected in names, expected
    assert not any(k.startswith("fc") or "num_batches_tracked" in k for k in names)
    assert len(names) == len(
        [k for k in tv.state_dict() if not k.startswith("fc.") and "num_batches" not in k]
    )
    torch.testing.assert_close(
        torch.from_numpy(raw["model"]["res3.0.shortcut.norm.running_var"]),
        tv.layer2[0].downsample[1].running_var,
    )

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    report = load_weights(backbone, str(out))
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = backbone(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for name, layer in zip(
            ["res2", "res3", "res4", "res5"], [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
        ):
            y = layer(y)
            # FrozenBN folds the statistics into a scale and shift: equal up to float32 rounding
            torch.testing.assert_close(ours[name], y, rtol=1e-3, atol=1e-5 * y.abs().max().item())


def test_resnet_rejects_foreign_names(tmp_path):
    src = tmp_path / "weird.pth"
    torch.save({"encoder.conv.weight": torch.zeros(1)}, src)
    with pytest.raises(ValueError, match="encoder.conv.weight"):
        convert_resnet.main([str(src), str(tmp_path / "out.pkl")])


SMALL = dict(embed_dim=16, depths=[2, 2, 4, 2], num_heads=[1, 2, 2, 4], window_size=7)


def _fake_official_swin() -> dict[str, torch.Tensor]:
    """An official-format Swin state dict: backbone names, plus the classifier, the final norm and
    the fixed-resolution attn_mask buffers of the shifted blocks; no per-stage norm{i}."""
    torch.manual_seed(0)
    state = {k: v for k, v in SwinTransformer(**SMALL).state_dict().items() if not k.startswith("norm")}
    state["norm.weight"] = torch.ones(128)
    state["norm.bias"] = torch.zeros(128)
    state["head.weight"] = torch.randn(1000, 128)
    state["head.bias"] = torch.zeros(1000)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return state


def test_swin_official_format(tmp_path, capsys):
    state = _fake_official_swin()
    src = tmp_path / "swin_small_fake.pth"
    torch.save({"model": state}, src)
    out = tmp_path / "swin_small_fake.pkl"
    assert convert_swin.main([str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    for line in [
        "MODEL.SWIN.EMBED_DIM 16",
        "MODEL.SWIN.DEPTHS [2, 2, 4, 2]",
        "MODEL.SWIN.NUM_HEADS [1, 2, 2, 4]",
        "MODEL.SWIN.WINDOW_SIZE 7",
        "MODEL.SWIN.PATCH_SIZE 4",
        "MODEL.SWIN.APE False",
    ]:
        assert line in printed

    converted = load_state_dict_file(str(out))
    assert not any(k.startswith(("head.", "norm.")) or k.endswith("attn_mask") for k in converted)
    assert converted["layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    fresh = SwinTransformer(**SMALL)
    report = load_weights(fresh, str(out))
    assert sorted(report.missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert report.unexpected == [] and report.mismatched == []
    for k, v in fresh.state_dict().items():
        if k in state:
            torch.testing.assert_close(v, state[k])


def test_swin_timm_layout_is_renumbered(tmp_path):
    ref = timm.models.swin_transformer.SwinTransformer(
        img_size=224, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), window_size=7, num_classes=10
    )
    converted = convert_swin.convert(ref.state_dict(), "timm")
    assert "layers.0.downsample.reduction.weight" in converted
    assert not any(k.startswith("layers.3.downsample") for k in converted)
    fresh = SwinTransformer(**SMALL)
    missing, unexpected = fresh.load_state_dict(
        {k: torch.from_numpy(v) for k, v in converted.items()}, strict=False
    )
    assert unexpected == []
    assert all(k.startswith("norm") or k.endswith("relative_position_index") for k in missing), missing
    torch.testing.assert_close(
        fresh.layers[1].downsample.reduction.weight, ref.layers[2].downsample.reduction.weight.detach()
    )


def test_swin_rejects_foreign_names():
    with pytest.raises(ValueError, match="encoder.layer.0"):
        convert_swin.convert(
            {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4), "encoder.layer.0": torch.zeros(1)}
        )
