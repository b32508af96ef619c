"""Builtin datasets under `$DETECTRON2_DATASETS` (default `./datasets`), with the original
project's names and folder layouts. Registering reads no files; a dataset whose folder is
missing fails on use with an error naming the path and the preparation step.

    coco/{train,val}2017/  annotations/instances_{train,val}2017.json
    coco/annotations/panoptic_{train,val}2017.json  coco/panoptic_{train,val}2017/
    coco/panoptic_semseg_{train,val}2017/       (tools/prepare_coco_semantic_annos_from_panoptic.py)
    ADEChallengeData2016/images/{training,validation}/
    ADEChallengeData2016/annotations_detectron2/{training,validation}/   (tools/prepare_ade20k_sem_seg.py)
    ADEChallengeData2016/ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/
                                                 (tools/prepare_ade20k_pan_seg.py)
    ADEChallengeData2016/ade20k_instance_{train,val}.json (tools/prepare_ade20k_ins_seg.py)
    ADE20K_2021_17_01/images_detectron2/{training,validation}/ + annotations_detectron2/
    cityscapes/leftImg8bit/{train,val}/  cityscapes/gtFine/{train,val}/  (cityscapesscripts)
    mapillary_vistas/{training,validation}/{images,labels,panoptic}/
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import (
    ADE20K_150_CATEGORIES,
    CITYSCAPES_CATEGORIES,
    COCO_CATEGORIES,
    MAPILLARY_VISTAS_CATEGORIES,
    instance_metadata,
    panoptic_metadata,
    semantic_metadata,
)
from .cityscapes import load_cityscapes_instances, load_cityscapes_panoptic, load_cityscapes_semantic
from .coco import load_coco_json, load_sem_seg, require_path
from .coco_panoptic import load_coco_panoptic_json
from .shapes import register_bundled_datasets


class Prepared(NamedTuple):
    """A file or folder written by a preparation script; checked when the dataset is loaded, so
    that the error names the script."""

    path: str
    what: str
    script: str


class Family(NamedTuple):
    """What the splits of one dataset share."""

    categories: tuple | None  # (id, name, isthing, colour) rows; None: only a class count
    ignore_label: int
    panoptic_evaluator: str | None = None


class SemSegSplit(NamedTuple):
    family: str  # key of _FAMILIES
    image_root: str
    sem_seg_root: str
    gt_ext: str = ".png"
    prepared: Prepared | None = None


class InstancesSplit(NamedTuple):
    family: str
    image_root: str
    json_file: str
    prepared: Prepared | None = None


class PanopticSplit(NamedTuple):
    family: str
    image_root: str
    panoptic_root: str
    panoptic_json: str
    sem_seg_root: str | None = None
    instances_json: str | None = None  # COCO instance AP on the same images
    prepared: Prepared | None = None


# The model needs Mapillary's thing/stuff split before any file is read; panoptic_2018.json
# numbers its categories from 1, in table order (a JSON that disagrees is reported on load).
_MAPILLARY_ONE_BASED = tuple((i + 1, *c[1:]) for i, c in enumerate(MAPILLARY_VISTAS_CATEGORIES))
_ADE20K_FULL_NUM_CLASSES = 847
_FAMILIES = {
    "coco": Family(COCO_CATEGORIES, 255, "coco_panoptic_seg"),
    "ade20k": Family(ADE20K_150_CATEGORIES, 255, "ade20k_panoptic_seg"),
    "ade20k_full": Family(None, 65535),  # no class table, _ADE20K_FULL_NUM_CLASSES classes
    "mapillary_vistas": Family(_MAPILLARY_ONE_BASED, 65, "mapillary_vistas_panoptic_seg"),
}

_ADE = "ADEChallengeData2016"
_ADE_FULL = "ADE20K_2021_17_01"
_MV = "mapillary_vistas"
_COCO_SEM = "COCO panoptic semantic labels", "tools/prepare_coco_semantic_annos_from_panoptic.py"
_ADE_SEM = "ADE20K semantic labels", "tools/prepare_ade20k_sem_seg.py"
_ADE_PAN = "ADE20K panoptic JSON", "tools/prepare_ade20k_pan_seg.py"
_ADE_INS = "ADE20K instance JSON", "tools/prepare_ade20k_ins_seg.py"

# Paths below are relative to the datasets root.
_PREDEFINED_SPLITS_SEM_SEG = {
    "ade20k_sem_seg_train": SemSegSplit(
        "ade20k",
        f"{_ADE}/images/training",
        f"{_ADE}/annotations_detectron2/training",
        prepared=Prepared(f"{_ADE}/annotations_detectron2/training", *_ADE_SEM),
    ),
    "ade20k_sem_seg_val": SemSegSplit(
        "ade20k",
        f"{_ADE}/images/validation",
        f"{_ADE}/annotations_detectron2/validation",
        prepared=Prepared(f"{_ADE}/annotations_detectron2/validation", *_ADE_SEM),
    ),
    "ade20k_full_sem_seg_train": SemSegSplit(
        "ade20k_full",
        f"{_ADE_FULL}/images_detectron2/training",
        f"{_ADE_FULL}/annotations_detectron2/training",
        gt_ext=".tif",
    ),
    "ade20k_full_sem_seg_val": SemSegSplit(
        "ade20k_full",
        f"{_ADE_FULL}/images_detectron2/validation",
        f"{_ADE_FULL}/annotations_detectron2/validation",
        gt_ext=".tif",
    ),
    "mapillary_vistas_sem_seg_train": SemSegSplit(
        "mapillary_vistas", f"{_MV}/training/images", f"{_MV}/training/labels"
    ),
    "mapillary_vistas_sem_seg_val": SemSegSplit(
        "mapillary_vistas", f"{_MV}/validation/images", f"{_MV}/validation/labels"
    ),
}

_PREDEFINED_SPLITS_INSTANCES = {
    "coco_2017_train": InstancesSplit("coco", "coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": InstancesSplit("coco", "coco/val2017", "coco/annotations/instances_val2017.json"),
    "ade20k_instance_train": InstancesSplit(
        "ade20k",
        f"{_ADE}/images/training",
        f"{_ADE}/ade20k_instance_train.json",
        Prepared(f"{_ADE}/ade20k_instance_train.json", *_ADE_INS),
    ),
    "ade20k_instance_val": InstancesSplit(
        "ade20k",
        f"{_ADE}/images/validation",
        f"{_ADE}/ade20k_instance_val.json",
        Prepared(f"{_ADE}/ade20k_instance_val.json", *_ADE_INS),
    ),
}

_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": PanopticSplit(
        "coco",
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        instances_json="coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic": PanopticSplit(
        "coco",
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        instances_json="coco/annotations/instances_val2017.json",
    ),
    "coco_2017_train_panoptic_with_sem_seg": PanopticSplit(
        "coco",
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
        Prepared("coco/panoptic_semseg_train2017", *_COCO_SEM),
    ),
    "coco_2017_val_panoptic_with_sem_seg": PanopticSplit(
        "coco",
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
        Prepared("coco/panoptic_semseg_val2017", *_COCO_SEM),
    ),
    "ade20k_panoptic_train": PanopticSplit(
        "ade20k",
        f"{_ADE}/images/training",
        f"{_ADE}/ade20k_panoptic_train",
        f"{_ADE}/ade20k_panoptic_train.json",
        f"{_ADE}/annotations_detectron2/training",
        f"{_ADE}/ade20k_instance_train.json",
        Prepared(f"{_ADE}/ade20k_panoptic_train.json", *_ADE_PAN),
    ),
    "ade20k_panoptic_val": PanopticSplit(
        "ade20k",
        f"{_ADE}/images/validation",
        f"{_ADE}/ade20k_panoptic_val",
        f"{_ADE}/ade20k_panoptic_val.json",
        f"{_ADE}/annotations_detectron2/validation",
        f"{_ADE}/ade20k_instance_val.json",
        Prepared(f"{_ADE}/ade20k_panoptic_val.json", *_ADE_PAN),
    ),
    "mapillary_vistas_panoptic_train": PanopticSplit(
        "mapillary_vistas",
        f"{_MV}/training/images",
        f"{_MV}/training/panoptic",
        f"{_MV}/training/panoptic/panoptic_2018.json",
        f"{_MV}/training/labels",
    ),
    "mapillary_vistas_panoptic_val": PanopticSplit(
        "mapillary_vistas",
        f"{_MV}/validation/images",
        f"{_MV}/validation/panoptic",
        f"{_MV}/validation/panoptic/panoptic_2018.json",
        f"{_MV}/validation/labels",
    ),
}

# Cityscapes in the cityscapesscripts layout: split -> (image dir, ground-truth dir); the
# panoptic PNGs and JSON sit in gtFine/ (cityscapesscripts' createPanopticImgs).
_PREDEFINED_SPLITS_CITYSCAPES = {
    "train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/train"),
    "val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"),
}


def _root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _load_prepared(root: str, prepared: Prepared, load: Callable[[], list[dict]]) -> list[dict]:
    require_path(os.path.join(root, prepared.path), prepared.what, f"Run {prepared.script}.")
    return load()


def _register(
    root: str, name: str, load: Callable[[], list[dict]], metadata: dict, prepared: Prepared | None = None
) -> None:
    """Register `load` (checking first that the `prepared` file exists) and the metadata."""
    DatasetCatalog.register(name, load if prepared is None else partial(_load_prepared, root, prepared, load))
    MetadataCatalog.get(name).set(**metadata)


def _register_sem_seg(root: str) -> None:
    for name, split in _PREDEFINED_SPLITS_SEM_SEG.items():
        img, sem = os.path.join(root, split.image_root), os.path.join(root, split.sem_seg_root)
        family = _FAMILIES[split.family]
        classes = (
            semantic_metadata(family.categories)
            if family.categories
            else {"num_classes": _ADE20K_FULL_NUM_CLASSES}
        )
        _register(
            root,
            name,
            partial(load_sem_seg, sem, img, split.gt_ext, ".jpg"),
            dict(
                image_root=img,
                sem_seg_root=sem,
                evaluator_type="sem_seg",
                ignore_label=family.ignore_label,
                **classes,
            ),
            split.prepared,
        )


def _register_instances(root: str) -> None:
    for name, split in _PREDEFINED_SPLITS_INSTANCES.items():
        img, json_file = os.path.join(root, split.image_root), os.path.join(root, split.json_file)
        _register(
            root,
            name,
            partial(load_coco_json, json_file, img, name),
            dict(
                json_file=json_file,
                image_root=img,
                evaluator_type="coco",
                **instance_metadata(_FAMILIES[split.family].categories),
            ),
            split.prepared,
        )


def _register_coco_panoptic(root: str) -> None:
    for name, split in _PREDEFINED_SPLITS_COCO_PANOPTIC.items():
        family = _FAMILIES[split.family]
        img = os.path.join(root, split.image_root)
        pan_dir, pan_json = os.path.join(root, split.panoptic_root), os.path.join(root, split.panoptic_json)
        sem = split.sem_seg_root and os.path.join(root, split.sem_seg_root)
        optional = {"sem_seg_root": sem} if sem else {}
        if split.instances_json:
            optional["json_file"] = os.path.join(root, split.instances_json)
        _register(
            root,
            name,
            partial(load_coco_panoptic_json, pan_json, img, pan_dir, MetadataCatalog.get(name), sem),
            dict(
                image_root=img,
                panoptic_root=pan_dir,
                panoptic_json=pan_json,
                evaluator_type=family.panoptic_evaluator,
                ignore_label=family.ignore_label,
                label_divisor=1000,
                **optional,
                **panoptic_metadata(family.categories),
            ),
            split.prepared,
        )


def _register_cityscapes(root: str) -> None:
    for split, (image_dir, gt_dir) in _PREDEFINED_SPLITS_CITYSCAPES.items():
        img, gt = os.path.join(root, image_dir), os.path.join(root, gt_dir)
        common = dict(image_dir=img, gt_dir=gt, ignore_label=255)
        _register(
            root,
            f"cityscapes_fine_sem_seg_{split}",
            partial(load_cityscapes_semantic, img, gt),
            dict(evaluator_type="cityscapes_sem_seg", **common, **semantic_metadata(CITYSCAPES_CATEGORIES)),
        )
        _register(
            root,
            f"cityscapes_fine_instance_seg_{split}",
            partial(load_cityscapes_instances, img, gt),
            dict(evaluator_type="cityscapes_instance", **common, **instance_metadata(CITYSCAPES_CATEGORIES)),
        )
        name = f"cityscapes_fine_panoptic_{split}"
        pan_dir = os.path.join(os.path.dirname(gt), f"cityscapes_panoptic_{split}")
        pan_json = pan_dir + ".json"
        _register(
            root,
            name,
            partial(load_cityscapes_panoptic, img, pan_dir, pan_json, MetadataCatalog.get(name)),
            dict(
                evaluator_type="cityscapes_panoptic_seg",
                image_root=img,
                panoptic_root=pan_dir,
                panoptic_json=pan_json,
                label_divisor=1000,
                **common,
                **panoptic_metadata(CITYSCAPES_CATEGORIES),
            ),
        )


def register_all(root: str | None = None) -> None:
    """Register every builtin dataset under `root` (default: $DETECTRON2_DATASETS or ./datasets)
    from the tables above, one loop per format, and the bundled shapes dataset (`make demo`,
    generated into <root>/shapes)."""
    root = _root() if root is None else root
    _register_instances(root)
    _register_coco_panoptic(root)
    _register_sem_seg(root)
    _register_cityscapes(root)
    register_bundled_datasets(os.path.join(root, "shapes"))


__all__ = ["register_all"]
