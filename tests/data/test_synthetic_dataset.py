"""The bundled shapes dataset: deterministic files that load through the catalog, and
annotations that agree across the panoptic, instance and semantic formats."""

import filecmp
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data import DatasetCatalog, MetadataCatalog, build_dataset_mapper
from mask2former.data.datasets.shapes import (
    SHAPES_CATEGORIES,
    SceneConfig,
    dataset_exists,
    generate_scene,
    generate_split,
    register_bundled_datasets,
)
from mask2former.data.detection_utils import read_panoptic_png

SMALL = SceneConfig(height=64, width=80, min_radius=6, max_radius=12)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_split(root, "train", 6, seed=0, cfg=SMALL)
    generate_split(root, "val", 4, seed=1, cfg=SMALL)
    return root


@pytest.fixture(scope="module")
def registered(shapes_root):
    prefix = "test_synth_shapes"
    register_bundled_datasets(shapes_root, prefix=prefix)
    names = [f"{prefix}_{s}{k}" for s in ("train", "val") for k in ("_panoptic", "")]
    names += [f"{prefix}_sem_seg_{s}" for s in ("train", "val")]
    yield prefix
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_generation_is_deterministic(tmp_path, shapes_root):
    generate_split(str(tmp_path), "val", 4, seed=1, cfg=SMALL)
    for sub in ("val", "panoptic_val", "panoptic_semseg_val"):
        files = sorted(os.listdir(tmp_path / sub))
        assert files == sorted(os.listdir(os.path.join(shapes_root, sub))) and len(files) == 4
        match, mismatch, errors = filecmp.cmpfiles(
            tmp_path / sub, os.path.join(shapes_root, sub), files, shallow=False
        )
        assert not mismatch and not errors, (sub, mismatch, errors)
    for j in ("panoptic_val.json", "instances_val.json"):
        assert filecmp.cmp(
            tmp_path / "annotations" / j, os.path.join(shapes_root, "annotations", j), shallow=False
        )
    other = str(tmp_path / "other")
    generate_split(other, "val", 4, seed=2, cfg=SMALL)
    assert not filecmp.cmp(
        os.path.join(other, "val", "shapes_val_00001.png"), tmp_path / "val" / "shapes_val_00001.png"
    )


def test_scene_has_things_and_stuff_that_tile_the_image():
    rng = np.random.default_rng(3)
    for _ in range(5):
        image, segments = generate_scene(SMALL, rng)
        assert image.shape == (64, 80, 3) and image.dtype == np.uint8
        cover = np.stack([s["mask"] for s in segments]).sum(0)
        assert (cover == 1).all()  # disjoint and complete
        things = [s for s in segments if s["isthing"]]
        assert SMALL.min_things <= len(things) <= SMALL.max_things
        assert any(not s["isthing"] for s in segments)


def test_panoptic_png_json_and_semantic_agree(shapes_root):
    for split in ("train", "val"):
        with open(os.path.join(shapes_root, "annotations", f"panoptic_{split}.json")) as f:
            pan_json = json.load(f)
        cats = {c["id"]: c for c in pan_json["categories"]}
        assert {c["id"]: (c["name"], c["isthing"]) for c in cats.values()} == {
            c[0]: (c[1], c[2]) for c in SHAPES_CATEGORIES
        }
        contiguous = {c[0]: i for i, c in enumerate(SHAPES_CATEGORIES)}
        for ann in pan_json["annotations"]:
            ids = read_panoptic_png(os.path.join(shapes_root, f"panoptic_{split}", ann["file_name"]))
            sem = np.asarray(
                Image.open(os.path.join(shapes_root, f"panoptic_semseg_{split}", ann["file_name"]))
            )
            listed = {s["id"] for s in ann["segments_info"]}
            assert set(np.unique(ids).tolist()) == listed  # every listed id is in the PNG, and only those
            assert any(s["id"] >= 256 for s in ann["segments_info"])  # ids use more than the R channel
            for s in ann["segments_info"]:
                mask = ids == s["id"]
                ys, xs = np.nonzero(mask)
                assert s["area"] == int(mask.sum())
                assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert (sem[mask] == contiguous[s["category_id"]]).all()
            assert (sem != 255).all()


def test_instances_equal_panoptic_thing_segments(shapes_root):
    for split in ("train", "val"):
        with open(os.path.join(shapes_root, "annotations", f"panoptic_{split}.json")) as f:
            pan_json = json.load(f)
        with open(os.path.join(shapes_root, "annotations", f"instances_{split}.json")) as f:
            inst_json = json.load(f)
        assert all(c["isthing"] for c in inst_json["categories"])
        by_image = {}
        for a in inst_json["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for ann in pan_json["annotations"]:
            ids = read_panoptic_png(os.path.join(shapes_root, f"panoptic_{split}", ann["file_name"]))
            things = [s for s in ann["segments_info"] if cats_isthing(pan_json, s["category_id"])]
            insts = by_image.get(ann["image_id"], [])
            assert len(insts) == len(things) >= SMALL.min_things
            for s, inst in zip(things, insts):
                decoded = mask_util.decode({"size": inst["segmentation"]["size"],
                                            "counts": inst["segmentation"]["counts"].encode()}).astype(bool)  # fmt: skip
                assert np.array_equal(decoded, ids == s["id"])
                assert inst["category_id"] == s["category_id"]
                assert inst["bbox"] == s["bbox"] and inst["area"] == s["area"]


def cats_isthing(pan_json, category_id):
    return next(c["isthing"] for c in pan_json["categories"] if c["id"] == category_id)


def test_registered_datasets_load_and_map(registered):
    prefix = registered
    pan = DatasetCatalog.get(f"{prefix}_train_panoptic")
    inst = DatasetCatalog.get(f"{prefix}_train")
    sem = DatasetCatalog.get(f"{prefix}_sem_seg_val")
    assert len(pan) == len(inst) == 6 and len(sem) == 4
    meta = MetadataCatalog.get(f"{prefix}_val_panoptic")
    assert meta.stuff_classes == [c[1] for c in SHAPES_CATEGORIES]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.evaluator_type == "coco_panoptic_seg" and os.path.isfile(meta.json_file)
    assert MetadataCatalog.get(f"{prefix}_train").thing_classes == ["circle", "square", "triangle", "star"]

    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", (f"{prefix}_train_panoptic",), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 8,
                         "INPUT.DATASET_MAPPER_NAME", "mask_former_panoptic", "INPUT.MIN_SIZE_TRAIN", (64,),
                         "INPUT.FORMAT", "RGB"])  # fmt: skip
    out = build_dataset_mapper(cfg, True)(dict(pan[0]))
    assert out["image"].shape[0] == 3 and len(out["instances"]) == len(pan[0]["segments_info"])
    assert sorted(out["instances"].gt_classes.tolist()) == sorted(
        s["category_id"] for s in pan[0]["segments_info"]
    )


def test_dataset_exists(shapes_root, tmp_path):
    assert dataset_exists(shapes_root)
    assert not dataset_exists(str(tmp_path))


def test_missing_files_fail_on_use_with_the_path(tmp_path):
    register_bundled_datasets(str(tmp_path / "nowhere"), prefix="test_missing_shapes")
    try:
        with pytest.raises(FileNotFoundError, match="nowhere"):
            DatasetCatalog.get("test_missing_shapes_val_panoptic")
    finally:
        for s in ("train", "val"):
            for n in (
                f"test_missing_shapes_{s}_panoptic",
                f"test_missing_shapes_{s}",
                f"test_missing_shapes_sem_seg_{s}",
            ):
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)
