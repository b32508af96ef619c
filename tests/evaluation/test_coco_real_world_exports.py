"""COCO exports as annotation tools write them (labelme2coco: annotation ids from 0, a
`_background_` category with id 0, non-contiguous category ids, images without annotations):
registration fills the metadata at once and reports the placeholder category; evaluation gives
the same AP as a cleanly numbered file (ground truth fed back as predictions: AP 100)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from mask2former.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from mask2former.evaluation import COCOEvaluator
from mask2former.structures import Boxes, Instances
from mask2former.utils.testing import make_labelme_coco, unique_dataset_name


def _ground_truth_as_predictions(json_file: str, name: str) -> tuple[list, list]:
    """(inputs, outputs) for COCOEvaluator.process: every non-crowd ground-truth mask as a
    prediction with score 1 and its contiguous class."""
    coco = COCO(json_file)
    to_contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    inputs, outputs = [], []
    for img in coco.dataset["images"]:
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == img["id"]]
        if anns:
            masks = torch.as_tensor(np.stack([coco.annToMask(a) for a in anns])).bool()
        else:
            masks = torch.zeros((0, img["height"], img["width"]), dtype=torch.bool)
        instances = Instances(
            (img["height"], img["width"]),
            pred_masks=masks,
            scores=torch.ones(len(anns)),
            pred_classes=torch.tensor([to_contiguous[a["category_id"]] for a in anns], dtype=torch.int64),
            pred_boxes=Boxes.from_masks(masks),
        )
        inputs.append({"image_id": img["id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def _ap(json_file: str, image_dir: str, predictions_from: str | None = None) -> dict:
    name = unique_dataset_name("t_labelme")
    register_coco_instances(name, {}, json_file, image_dir)
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get(name)) > 0  # the loader takes any ids
    ev = COCOEvaluator(name)
    ev.reset()
    inputs, outputs = _ground_truth_as_predictions(predictions_from or json_file, name)
    ev.process(inputs, outputs)
    return ev.evaluate()["segm"]


def test_registration_fills_metadata_and_drops_an_unused_background(tmp_path, caplog):
    json_file, image_dir = make_labelme_coco(tmp_path)
    name = unique_dataset_name("t_labelme_meta")
    with caplog.at_level(logging.INFO, logger="mask2former"):
        register_coco_instances(name, {}, json_file, image_dir)
    meta = MetadataCatalog.get(name)  # set before anything is loaded
    assert meta.thing_classes == ["bottle", "cup"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 4: 1}
    report = [r for r in caplog.records if "_background_" in r.getMessage()]
    assert len(report) == 1 and report[0].levelno == logging.WARNING, report
    assert "dropped" in report[0].getMessage() and "used by 0 annotations" in report[0].getMessage()
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 6 and dicts[-1]["annotations"] == []  # the image without annotations stays
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0, 1}


def test_a_used_background_is_kept_with_a_warning_unless_dropped(tmp_path, caplog):
    json_file, image_dir = make_labelme_coco(tmp_path, use_background=True)
    kept = unique_dataset_name("t_labelme_bg")
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        register_coco_instances(kept, {}, json_file, image_dir)
    assert MetadataCatalog.get(kept).thing_classes == ["_background_", "bottle", "cup"]
    warning = [r for r in caplog.records if "_background_" in r.getMessage()]
    assert len(warning) == 1 and warning[0].levelno == logging.WARNING
    assert "KEPT" in warning[0].getMessage() and "used by 1 annotations" in warning[0].getMessage()

    dropped = unique_dataset_name("t_labelme_bg_drop")
    register_coco_instances(dropped, {}, json_file, image_dir, placeholder_categories="drop")
    assert MetadataCatalog.get(dropped).thing_classes == ["bottle", "cup"]
    n_all = sum(len(d["annotations"]) for d in DatasetCatalog.get(kept))
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get(dropped)) == n_all - 1
    with pytest.raises(ValueError, match="placeholder_categories"):
        register_coco_instances(
            unique_dataset_name("t_bad"), {}, json_file, image_dir, placeholder_categories="no"
        )


def test_annotation_ids_from_zero_repeated_or_missing_give_the_clean_ap(tmp_path, caplog):
    json_file, image_dir = make_labelme_coco(tmp_path)
    data = json.loads(Path(json_file).read_text())
    variants = {}
    clean = dict(data, annotations=[dict(a, id=a["id"] + 1) for a in data["annotations"]])
    repeated = dict(data, annotations=[dict(a, id=7) for a in data["annotations"]])
    missing = dict(data, annotations=[{k: v for k, v in a.items() if k != "id"} for a in data["annotations"]])
    for key, content in (("clean", clean), ("repeated", repeated), ("missing", missing)):
        variants[key] = tmp_path / f"{key}.json"
        variants[key].write_text(json.dumps(content))

    reference = _ap(str(variants["clean"]), image_dir)
    assert reference["AP"] == 100
    for key, path in (
        ("from 0", json_file),
        ("repeated", variants["repeated"]),
        ("missing", variants["missing"]),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mask2former"):
            ours = _ap(str(path), image_dir, predictions_from=str(variants["clean"]))
        assert json.dumps(ours) == json.dumps(reference), key  # NaN (no large objects) compares equal here
        lines = [r.getMessage() for r in caplog.records if "renumbered" in r.getMessage()]
        assert len(lines) == 1 and str(path) in lines[0], (key, lines)


def test_labelme_export_ground_truth_as_predictions_scores_ap_100(tmp_path):
    json_file, image_dir = make_labelme_coco(tmp_path, n_images=8, seed=3)
    res = _ap(json_file, image_dir)
    assert res["AP"] == 100 and res["AP50"] == 100 and res["AP-bottle"] == 100 and res["AP-cup"] == 100
    assert "AP-_background_" not in res
