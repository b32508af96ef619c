"""tools/visualize_data.py, tools/visualize_json_results.py and tools/browse_configs.py
(`python -m mask2former.model_zoo`) on the bundled shapes data, generated into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mask2former import model_zoo
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets
from mask2former.utils.testing import REPO, TINY_CONFIG

TINY = str(TINY_CONFIG)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis") / "shapes"
    scenes = SceneConfig(height=64, width=80, min_things=2, max_things=3)
    generate_split(str(root), "train", 3, seed=0, cfg=scenes)
    generate_split(str(root), "val", 2, seed=1, cfg=scenes)
    register_bundled_datasets(str(root), prefix="vis_shapes")
    return root


@pytest.mark.parametrize("tool", ["visualize_data", "visualize_json_results", "browse_configs"])
def test_help_shows_the_defaults(tool):
    out = subprocess.run(
        [sys.executable, f"tools/{tool}.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "default" in out.stdout and "usage:" in out.stdout


def test_visualize_data_draws_annotations_and_loader_output(shapes, tmp_path):
    tool = _tool("visualize_data")
    opts = ["DATASETS.TRAIN", "('vis_shapes_train_panoptic',)"]
    written = tool.main(["--config-file", TINY, "--source", "annotation", "--output-dir", str(tmp_path / "a"),
                         "--num-images", "2", "--scale", "2", *opts])  # fmt: skip
    assert [os.path.basename(p) for p in written] == ["shapes_train_00001.png", "shapes_train_00002.png"]
    raw = np.asarray(Image.open(shapes / "train" / "shapes_train_00001.png").convert("RGB"))
    drawn = np.asarray(Image.open(written[0]))
    assert drawn.shape == (128, 160, 3)
    upscaled = np.asarray(Image.fromarray(raw).resize((160, 128), Image.BILINEAR))
    assert np.abs(drawn.astype(int) - upscaled).mean() > 10  # masks and labels were drawn over it

    written = tool.main(["--config-file", TINY, "--source", "dataloader", "--output-dir", str(tmp_path / "d"),
                         "--num-images", "3", "--scale", "1", *opts])  # fmt: skip
    assert len(written) == 3 and all(os.path.isfile(p) for p in written)
    assert all(Image.open(p).size[1] == 64 for p in written)  # MIN_SIZE_TRAIN 64, scale 1


def test_visualize_json_results_draws_predictions_beside_the_ground_truth(shapes, tmp_path):
    # predictions: the val split's own ground-truth instances, with scores 0.9 and 0.3
    with open(shapes / "annotations" / "instances_val.json") as f:
        gt = json.load(f)
    predictions = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
         "bbox": a["bbox"], "score": 0.9 if i % 2 == 0 else 0.3}
        for i, a in enumerate(gt["annotations"])
    ]  # fmt: skip
    path = tmp_path / "coco_instances_results.json"
    path.write_text(json.dumps(predictions))
    tool = _tool("visualize_json_results")
    out = tool.main(["--input", str(path), "--dataset", "vis_shapes_val_panoptic", "--output", str(tmp_path / "o"),
                     "--scale", "1"])  # fmt: skip
    assert [os.path.basename(p) for p in out] == ["shapes_val_00001.png", "shapes_val_00002.png"]
    raw = np.asarray(Image.open(shapes / "val" / "shapes_val_00001.png").convert("RGB"))
    drawn = np.asarray(Image.open(out[0]))
    assert drawn.shape == (64, 160, 3)  # predictions | ground truth
    assert not np.array_equal(drawn[:, :80], raw) and not np.array_equal(drawn[:, 80:], raw)
    # above every score nothing is drawn on the left: the image itself
    out = tool.main(["--input", str(path), "--dataset", "vis_shapes_val_panoptic", "--output", str(tmp_path / "n"),
                     "--scale", "1", "--conf-threshold", "0.95"])  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(out[0]))[:, :80], raw)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tool.main(
            ["--input", str(path), "--dataset", "vis_shapes_val_panoptic", "--output", str(tmp_path / "x")]
        )


def test_model_zoo_lists_every_config_with_its_facts_and_merges_overrides(capsys):
    configs = model_zoo.all_configs()
    for entry in model_zoo.MODEL_ZOO:
        assert entry.config in configs, entry.config
        assert entry.weights.startswith("https://dl.fbaipublicfiles.com/maskformer/mask2former/")
        assert entry.results and entry.task in entry.config.replace("-segmentation", "")
    assert len(model_zoo.MODEL_ZOO) == 47
    r50 = model_zoo.describe("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    assert (r50.task, r50.dataset, r50.backbone, r50.results["PQ"]) == ("panoptic", "coco", "R50", 51.9)

    table = model_zoo.main(["--task", "semantic", "--dataset", "ade20k"])
    lines = table.splitlines()
    assert lines[-1] == "7 config(s)" and all("ade20k/semantic-segmentation" in x for x in lines[1:-1])
    assert "mIoU (ms+flip) 57.3" in table

    cfg_text = model_zoo.main(["--show", "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
                               "SOLVER.IMS_PER_BATCH", "8"])  # fmt: skip
    assert "IMS_PER_BATCH: 8" in cfg_text and "NUM_CLASSES: 133" in cfg_text
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        model_zoo.main(["--show", "nope.yaml"])
    out = subprocess.run([sys.executable, "-m", "mask2former.model_zoo", "--backbone", "Swin-L", "--task", "instance"],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("2 config(s)"), out.stdout + out.stderr
