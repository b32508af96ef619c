"""Model-zoo configs: every config of the original under configs/{coco,ade20k,cityscapes,mapillary-vistas}
merges to the original's settings, and builds a model with the original's parameter and buffer counts.

References (parsed here): shared/reference/original_configs.md (merged settings that differ from the
defaults, values as Python literals) and shared/reference/param_counts.md (counts per config).
"""

from __future__ import annotations

import ast
import os
import re

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.layers import ShapeSpec
from mask2former.utils.testing import REPO, reference_dir, require_file

CONFIGS = REPO / "configs"
FOLDERS = ("coco", "ade20k", "cityscapes", "mapillary-vistas")
REFERENCE = reference_dir()


def _parse_original_configs() -> dict[str, dict]:
    """{path: {"chain": [base paths], "settings": {KEY: value}}} from original_configs.md."""
    files: dict[str, dict] = {}
    current = None
    for line in require_file(REFERENCE / "original_configs.md", module_level=True).read_text().splitlines():
        if m := re.match(r"## `(.+)`$", line):
            current = files.setdefault(m.group(1), {"chain": [], "settings": {}})
        elif current is not None and (m := re.match(r"base chain: (.*)", line)):
            current["chain"] = re.findall(r"`([^`]+)`", m.group(1))
        elif current is not None and (m := re.match(r"- `([A-Z0-9_.]+)`: `(.*)`$", line)):
            current["settings"][m.group(1)] = ast.literal_eval(m.group(2))
    return files


def _parse_param_counts() -> dict[str, tuple[int, int, int]]:
    """{config path: (parameters, trainable, buffers)} from param_counts.md."""
    counts = {}
    for line in require_file(REFERENCE / "param_counts.md", module_level=True).read_text().splitlines():
        if m := re.match(r"\| `(.+\.yaml)` \| (\d+) \| (\d+) \| (\d+) \|", line):
            counts[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    return counts


ORIGINAL = _parse_original_configs()
COUNTS = _parse_param_counts()
MODEL_CONFIGS = sorted(p for p in ORIGINAL if not os.path.basename(p).startswith("Base-"))


def _flatten(node, prefix="") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _plain(v):
    """Lists and tuples compare equal (YAML has no tuples; yacs keeps the default's type)."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _load(path: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / path))
    return cfg


def test_reference_tables_parsed():
    assert len(ORIGINAL) == 57
    assert len(MODEL_CONFIGS) == 47
    assert set(COUNTS) == set(MODEL_CONFIGS)


def test_same_files_as_the_original():
    ours = {str(p.relative_to(CONFIGS)) for folder in FOLDERS for p in (CONFIGS / folder).rglob("*.yaml")}
    assert ours == set(ORIGINAL)


@pytest.mark.parametrize("path", sorted(ORIGINAL))
def test_merged_settings_equal_the_originals(path):
    merged = _flatten(_load(path))
    defaults = _flatten(get_cfg())
    expected = ORIGINAL[path]["settings"]
    assert set(expected) <= set(merged), (
        f"{path}: keys missing from the defaults: {set(expected) - set(merged)}"
    )
    wrong = {
        k: (merged[k], expected.get(k, defaults[k]))
        for k in merged
        if _plain(merged[k]) != _plain(expected.get(k, defaults[k]))
    }
    assert not wrong, f"{path}: (ours, original) differ for {wrong}"


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------
# A Detectron2 ResNet-50 has 53 norm layers over 26560 channels: 23508032 parameters when its norms
# are trainable (BN/SyncBN: weight and bias are parameters; running mean/var and a counter per layer
# are buffers), 2 * 26560 fewer with FrozenBN, which keeps all 4 per-channel tensors as buffers.
_R50_NORM_CHANNELS = 26560
_R50_PARAMS = {"FrozenBN": 23508032 - 2 * _R50_NORM_CHANNELS}
_R50_BUFFERS = {
    "FrozenBN": 4 * _R50_NORM_CHANNELS,
    "BN": 2 * _R50_NORM_CHANNELS + 53,
    "SyncBN": 2 * _R50_NORM_CHANNELS + 53,
}
_RESNET_CHANNELS = 2048 + 1024 + 512 + 256  # res5..res2


def _swin_share(path: str) -> tuple[int, int]:
    """The backbone's share of the original's counts for a Swin config, from the table's counts of
    the R50 config it derives from (same dataset, task and classes). Only the pixel decoder's
    input projections and res2 lateral (256 out channels each, 1x1) and the queries (query_feat +
    query_embed, 2 x 256 per query) differ between the two heads."""
    r50 = ORIGINAL[path]["chain"][0]
    swin = _flatten(_load(path))
    r50_cfg = _flatten(_load(r50))
    norm = r50_cfg["MODEL.RESNETS.NORM"]
    r50_params = _R50_PARAMS.get(norm, 23508032)
    swin_channels = sum(swin["MODEL.SWIN.EMBED_DIM"] * 2**i for i in range(4))
    head_delta = 256 * (_RESNET_CHANNELS - swin_channels)
    query_delta = 512 * (
        swin["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"] - r50_cfg["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"]
    )
    params = COUNTS[path][0] - COUNTS[r50][0] + r50_params + head_delta - query_delta
    buffers = COUNTS[path][2] - (COUNTS[r50][2] - _R50_BUFFERS[norm])
    return params, buffers


SWIN_CONFIGS = [p for p in MODEL_CONFIGS if "/swin/" in p]


@pytest.mark.parametrize("path", SWIN_CONFIGS)
def test_swin_backbone_is_the_originals_share(path):
    from mask2former.modeling.backbone.swin import D2SwinTransformer

    cfg = _load(path)
    with torch.device("meta"):
        backbone = D2SwinTransformer(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    params = sum(p.numel() for p in backbone.parameters())
    buffers = sum(b.numel() for b in backbone.buffers())
    assert (params, buffers) == _swin_share(path)


def _build(path: str, device: str) -> torch.nn.Module:
    import mask2former.data  # noqa: F401  (registers the builtin datasets' metadata, needed by panoptic/instance inference)
    import mask2former.modeling.backbone.swin  # noqa: F401  (registers D2SwinTransformer)
    from mask2former.modeling import build_model

    cfg = _load(path)
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    if device == "meta":  # count without allocating or initialising weights
        with torch.device("meta"):
            return build_model(cfg)
    return build_model(cfg)


def _counts(model: torch.nn.Module) -> tuple[int, int, int]:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return params, trainable, buffers


@pytest.mark.parametrize("path", MODEL_CONFIGS)
def test_model_param_and_buffer_counts(path):
    got = _counts(_build(path, "meta"))
    assert got == COUNTS[path], (
        f"{path}: (params, trainable, buffers) ours {got} vs the original's {COUNTS[path]}"
    )


def test_model_counts_on_cpu_equal_meta():
    """One real build (MODEL.DEVICE cpu, random weights) to show the meta-device counts are the real ones."""
    path = "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
    model = _build(path, "cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert _counts(model) == _counts(_build(path, "meta"))
