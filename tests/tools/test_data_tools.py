"""Dataset preparation tools on a tiny ADE20K-style tree; outputs load with the project's loaders."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
from PIL import Image

from mask2former.data import MetadataCatalog, load_coco_json, load_coco_panoptic_json, load_sem_seg
from mask2former.utils.testing import TOOLS


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ade20k_preparation(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training", "annotations_instance/training"):
        (root / sub).mkdir(parents=True)
    sem = np.zeros((8, 10), np.uint8)  # 0 void
    sem[:, :5] = 1  # wall (stuff, class 0)
    sem[2:6, 6:9] = 13  # person (thing, class 12)
    inst = np.zeros((8, 10, 3), np.uint8)
    inst[2:6, 6:9, 0] = 4  # 4th thing = person
    inst[2:6, 6:9, 1] = 1
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images/training/a.jpg")
    Image.fromarray(sem).save(root / "annotations/training/a.png")
    Image.fromarray(inst).save(root / "annotations_instance/training/a.png")

    _tool("prepare_ade20k_sem_seg").convert(
        str(root / "annotations/training"), str(root / "annotations_detectron2/training")
    )
    lab = np.asarray(Image.open(root / "annotations_detectron2/training/a.png"))
    assert lab[0, 0] == 0 and lab[3, 7] == 12 and lab[0, 9] == 255
    assert (
        len(load_sem_seg(str(root / "annotations_detectron2/training"), str(root / "images/training"))) == 1
    )

    _tool("prepare_ade20k_pan_seg").convert(str(root), "train", "training")
    dicts = load_coco_panoptic_json(
        str(root / "ade20k_panoptic_train.json"),
        str(root / "images/training"),
        str(root / "ade20k_panoptic_train"),
        MetadataCatalog.get("ade20k_panoptic_train"),
    )
    segs = sorted((s["category_id"], s["isthing"], s["area"]) for s in dicts[0]["segments_info"])
    assert segs == [(0, False, 40), (12, True, 12)]

    _tool("prepare_ade20k_ins_seg").convert(str(root), "train", "training")
    data = json.loads((root / "ade20k_instance_train.json").read_text())
    assert [a["category_id"] for a in data["annotations"]] == [12] and len(data["categories"]) == 100
    inst_dicts = load_coco_json(
        str(root / "ade20k_instance_train.json"), str(root / "images/training"), "ade20k_instance_train"
    )
    assert inst_dicts[0]["annotations"][0]["category_id"] == MetadataCatalog.get(
        "ade20k_instance_train"
    ).thing_classes.index("person")
