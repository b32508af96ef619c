"""tools/analyze_model.py on the bundled shapes config, and the FLOP counts of mask2former/utils/flop_count.py
against counts made independently from the modules' shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mask2former.config import get_cfg
from mask2former.modeling import build_model
from mask2former.utils.flop_count import model_flop_analysis

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/shapes/maskformer2_R18_shapes.yaml"
sys.path.insert(0, str(ROOT / "tools"))
import analyze_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_help_lists_tasks_and_defaults():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/analyze_model.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in ("flop", "activation", "parameter", "structure", "default: 800", "default: 1216"):
        assert word in out


def test_flop_counts_match_shapes_of_the_modules(model):
    """Convolutions counted by forward hooks (out elements x in channels / groups x kernel area) and the
    deformable-attention op by its formula equal fvcore's per-operator counts with our handles."""
    conv_flops = []

    def count_conv(m: nn.Conv2d, inputs, output):
        kh, kw = m.kernel_size
        conv_flops.append(output.numel() * m.in_channels // m.groups * kh * kw)

    hooks = [m.register_forward_hook(count_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    with torch.no_grad():
        model([{"image": image}])
    for h in hooks:
        h.remove()
    by_op = model_flop_analysis(model, [image]).by_operator()
    assert by_op["conv"] == sum(conv_flops)
    # 2 encoder layers; padded 128x160 input -> levels 1/32, 1/16, 1/8: 4x5 + 8x10 + 16x20 queries;
    # 4 heads x 16 channels, 3 levels, 4 points, 5 FLOPs per sampled value and channel.
    queries = 4 * 5 + 8 * 10 + 16 * 20
    assert by_op["ms_deform_attn"] == 2 * queries * 4 * 3 * 4 * 16 * 5
    assert by_op["scaled_dot_product_attention"] > 0


def test_tool_on_the_shapes_config(capsys, model):
    analyze_model.main(
        ["--config-file", str(CONFIG), "--tasks", "flop", "parameter", "activation", "structure"]
        + ["--height", "128", "--width", "160", "--max-depth", "2"]
    )
    out = capsys.readouterr().out
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    expected_gflops = model_flop_analysis(model, [image]).total() / 1e9
    assert f"Total: {expected_gflops:.2f} GFLOPs" in out
    assert re.search(r"\| sem_seg_head\.pixel_decoder\s+\|", out)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"Total: {n_params:.2f} M parameters" in out
    assert "#activations" in out and "M activations" in out
    assert "MultiScaleMaskedTransformerDecoder(" in out
