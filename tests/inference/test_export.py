"""Model export: tools/export_model.py writes a torch.export program and an ONNX model of a tiny
Mask2Former; both must reproduce the eager network, and post-processing their outputs must give
the eager panoptic segmentation."""

from __future__ import annotations

import importlib
import importlib.util
import json

import onnx
import pytest
import torch

from mask2former.checkpoint import dataset_metadata, save_weights
from mask2former.config import get_cfg
from mask2former.inference.export import (
    ExportableMaskFormer,
    batch_images,
    load_exported_program,
    max_abs_differences,
    postprocess_exported,
    run_onnx,
)
from mask2former.layers.extension import compiled_op_available
from mask2former.layers.ms_deform_attn import (
    deform_attn_implementation,
    ms_deform_attn,
    ms_deform_attn_reference,
)
from mask2former.modeling import build_model
from mask2former.utils.testing import REPO as ROOT

CONFIG = ROOT / "configs" / "shapes" / "maskformer2_R18_tiny_test.yaml"
HEIGHT, WIDTH = 64, 96
TOLERANCE = 1e-3  # max |exported - eager| <= TOLERANCE * max(1, max |eager|), per output


def _tool():
    spec = importlib.util.spec_from_file_location("export_model", ROOT / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_tool = _tool()


def _within_tolerance(expected, actual) -> dict[str, tuple[float, float]]:
    diffs = max_abs_differences(expected, actual)
    for name, (diff, scale) in diffs.items():
        assert diff <= TOLERANCE * max(1.0, scale), f"{name}: max|diff| {diff:.3e} (max|eager| {scale:.3e})"
    return diffs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager MaskFormer, its export wrapper, output folder) after running the tool on its weights."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = tmp_path_factory.mktemp("export")
    weights = str(out / "weights.pth")
    metadata = dict(dataset_metadata(cfg), dataset_name="export_test_custom")
    metadata["stuff_classes"] = metadata["thing_classes"] = [f"part {i}" for i in range(8)]
    save_weights(model, weights, metadata=metadata)
    argv = [
        "--config-file",
        str(CONFIG),
        "--weights",
        weights,
        "--height",
        str(HEIGHT),
        "--width",
        str(WIDTH),
    ]
    assert export_tool.main([*argv, "--output", str(out)]) == 0
    return model, ExportableMaskFormer(model), out


def test_metadata_of_the_weights_is_written_beside_the_exports(exported):
    with open(exported[2] / "metadata.json") as f:
        metadata = json.load(f)
    assert metadata["dataset_name"] == "export_test_custom"
    assert metadata["stuff_classes"] == [f"part {i}" for i in range(8)]
    assert metadata["thing_dataset_id_to_contiguous_id"] == {"1": 0, "2": 1, "3": 2, "4": 3}


def _samples() -> dict[str, torch.Tensor]:
    return export_tool.sample_images(1, HEIGHT, WIDTH, torch.device("cpu"))


def test_torch_export_program_matches_eager(exported):
    model, wrapper, out = exported
    assert (out / "model.pt2.sha256").is_file() and (out / "model.onnx.sha256").is_file()
    program = load_exported_program(str(out / "model.pt2"))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    if compiled_op_available("cpu"):
        assert "mask2former.ms_deform_attn.default" in ops
    module = program.module()
    for images in _samples().values():
        with torch.no_grad():
            expected = wrapper(images)
            logits, masks = module(images)
        decoder = model.sem_seg_head.predictor
        assert logits.shape == (1, decoder.num_queries, decoder.class_embed.out_features)
        assert masks.shape == (1, decoder.num_queries, HEIGHT // 4, WIDTH // 4)
        _within_tolerance(expected, (logits, masks))


def test_onnx_model_matches_eager_and_uses_grid_sample(exported):
    _, wrapper, out = exported
    path = str(out / "model.onnx")
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    op_types = {n.op_type for n in graph.graph.node}
    # deformable attention went through its PyTorch formulation: one GridSample per encoder level
    assert "GridSample" in op_types
    assert sum(n.op_type == "GridSample" for n in graph.graph.node) == 3
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {18}
    for images in _samples().values():
        with torch.no_grad():
            expected = wrapper(images)
        _within_tolerance(expected, run_onnx(path, images))


def test_postprocessed_exported_outputs_match_eager_panoptic(exported, monkeypatch):
    model, _, out = exported
    # random weights give low class scores: keep every query so that segments come out
    monkeypatch.setattr(model, "object_mask_threshold", 0.0)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 60, 90), generator=gen, dtype=torch.uint8)  # padded to 64x96
    with torch.no_grad():
        eager = model([{"image": image}])[0]
    ids, segments = eager["panoptic_seg"]
    assert segments, "the sample must give at least one segment for the comparison to mean something"
    batch = batch_images(model, [image], (HEIGHT, WIDTH))
    program = load_exported_program(str(out / "model.pt2")).module()
    with torch.no_grad():
        from_program = program(batch)
    for outputs in (from_program, run_onnx(str(out / "model.onnx"), batch)):
        result = postprocess_exported(model, outputs, [(60, 90)], (HEIGHT, WIDTH))[0]
        got_ids, got_segments = result["panoptic_seg"]
        assert got_ids.shape == (60, 90)
        torch.testing.assert_close(got_ids, ids, rtol=0, atol=0)
        assert [{**s, "score": 0} for s in got_segments] == [{**s, "score": 0} for s in segments]
        assert [s["score"] for s in got_segments] == pytest.approx([s["score"] for s in segments], abs=1e-4)
        torch.testing.assert_close(result["sem_seg"], eager["sem_seg"], rtol=0, atol=1e-4)


def test_wrapper_pads_to_size_divisibility(exported):
    """A 50x70 input is padded inside the network exactly as the eager model pads it."""
    model, wrapper, _ = exported
    image = torch.rand(3, 50, 70) * 255
    with torch.no_grad():
        logits, masks = wrapper(image[None])
        padded = model.preprocess_image([{"image": image}]).tensor
        expected = model.sem_seg_head(model.backbone(padded))
    assert masks.shape[-2:] == (16, 24)
    torch.testing.assert_close(logits, expected["pred_logits"])
    torch.testing.assert_close(masks, expected["pred_masks"])


def test_tool_check_fails_beyond_tolerance(capsys):
    expected = (torch.zeros(1, 2, 3), torch.full((1, 2, 4, 4), 10.0))
    assert export_tool.check("close", expected, (expected[0] + 5e-4, expected[1] + 5e-3), 1e-3)
    assert not export_tool.check("far", expected, (expected[0] + 2e-3, expected[1]), 1e-3)
    assert "FAIL" in capsys.readouterr().out


def _deform_inputs():
    gen = torch.Generator().manual_seed(0)
    levels = [(4, 6), (2, 3)]
    shapes = torch.tensor(levels)
    starts = torch.tensor([0, 24])
    value = torch.randn(2, 30, 2, 4, generator=gen)
    locations = torch.rand(2, 5, 2, 2, 3, 2, generator=gen)
    weights = torch.rand(2, 5, 2, 2, 3, generator=gen)
    return levels, (value, shapes, starts, locations, weights)


def test_deform_attn_implementation_routes_auto_calls():
    levels, (value, shapes, starts, locations, weights) = _deform_inputs()
    expected = ms_deform_attn_reference(value, shapes, locations, weights)
    with deform_attn_implementation("reference", level_shapes=levels):
        got = ms_deform_attn(value, shapes, starts, locations, weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    msda = importlib.import_module("mask2former.layers.ms_deform_attn")
    assert msda._overrides == []  # the block restored the default


def test_deform_attn_implementation_rejects_wrong_level_shapes():
    _, (value, shapes, starts, locations, weights) = _deform_inputs()
    transposed = deform_attn_implementation("reference", level_shapes=[(6, 4), (3, 2)])  # right areas
    with transposed, pytest.raises(ValueError, match="differ from the spatial_shapes"):
        ms_deform_attn(value, shapes, starts, locations, weights)
    too_small = deform_attn_implementation("reference", level_shapes=[(4, 6), (2, 2)])
    with too_small, pytest.raises(ValueError, match="do not fit value"):
        ms_deform_attn(value, shapes, starts, locations, weights)
    with pytest.raises(ValueError, match="must be 'compiled' or 'reference'"):
        deform_attn_implementation("auto").__enter__()
    with pytest.raises(ValueError, match="only apply to impl='reference'"):
        deform_attn_implementation("compiled", level_shapes=[(4, 6)]).__enter__()
    msda = importlib.import_module("mask2former.layers.ms_deform_attn")
    assert msda._overrides == []
