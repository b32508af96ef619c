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


def _root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _register_coco(root: str) -> None:
    coco_inst_meta = {**instance_metadata(COCO_CATEGORIES), "evaluator_type": "coco"}
    coco_pan_meta = panoptic_metadata(COCO_CATEGORIES)
    for split in ("train", "val"):
        img = os.path.join(root, "coco", f"{split}2017")
        inst = os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")
        name = f"coco_2017_{split}"
        DatasetCatalog.register(name, lambda img=img, inst=inst, name=name: load_coco_json(inst, img, name))
        MetadataCatalog.get(name).set(json_file=inst, image_root=img, **coco_inst_meta)

        pan_json = os.path.join(root, "coco", "annotations", f"panoptic_{split}2017.json")
        pan_dir = os.path.join(root, "coco", f"panoptic_{split}2017")
        sem_dir = os.path.join(root, "coco", f"panoptic_semseg_{split}2017")
        for suffix, sem in (("", None), ("_with_sem_seg", sem_dir)):
            pname = f"coco_2017_{split}_panoptic{suffix}"
            meta = MetadataCatalog.get(pname)

            def load(img=img, pan_json=pan_json, pan_dir=pan_dir, meta=meta, sem=sem):
                if sem is not None:
                    require_path(
                        sem,
                        "COCO panoptic semantic labels",
                        "Run tools/prepare_coco_semantic_annos_from_panoptic.py.",
                    )
                return load_coco_panoptic_json(pan_json, img, pan_dir, meta, sem)

            DatasetCatalog.register(pname, load)
            extra = {"sem_seg_root": sem} if sem else {}
            meta.set(
                image_root=img,
                panoptic_root=pan_dir,
                panoptic_json=pan_json,
                json_file=inst,
                evaluator_type="coco_panoptic_seg",
                ignore_label=255,
                label_divisor=1000,
                **extra,
                **coco_pan_meta,
            )


def _register_ade20k(root: str) -> None:
    ade = os.path.join(root, "ADEChallengeData2016")
    sem_prep = "Run tools/prepare_ade20k_sem_seg.py."
    for split, folder in (("train", "training"), ("val", "validation")):
        img = os.path.join(ade, "images", folder)
        sem = os.path.join(ade, "annotations_detectron2", folder)

        def load_sem(img=img, sem=sem):
            require_path(sem, "ADE20K semantic labels", sem_prep)
            return load_sem_seg(sem, img, ".png", ".jpg")

        name = f"ade20k_sem_seg_{split}"
        DatasetCatalog.register(name, load_sem)
        MetadataCatalog.get(name).set(
            image_root=img,
            sem_seg_root=sem,
            evaluator_type="sem_seg",
            ignore_label=255,
            **semantic_metadata(ADE20K_150_CATEGORIES),
        )

        pan_json = os.path.join(ade, f"ade20k_panoptic_{split}.json")
        pan_dir = os.path.join(ade, f"ade20k_panoptic_{split}")
        inst_json = os.path.join(ade, f"ade20k_instance_{split}.json")
        name = f"ade20k_panoptic_{split}"
        meta = MetadataCatalog.get(name)

        def load_pan(img=img, pan_json=pan_json, pan_dir=pan_dir, meta=meta, sem=sem):
            require_path(pan_json, "ADE20K panoptic JSON", "Run tools/prepare_ade20k_pan_seg.py.")
            return load_coco_panoptic_json(pan_json, img, pan_dir, meta, sem)

        DatasetCatalog.register(name, load_pan)
        meta.set(
            image_root=img,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            sem_seg_root=sem,
            json_file=inst_json,
            evaluator_type="ade20k_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **panoptic_metadata(ADE20K_150_CATEGORIES),
        )

        name = f"ade20k_instance_{split}"

        def load_ins(img=img, inst_json=inst_json, name=name):
            require_path(inst_json, "ADE20K instance JSON", "Run tools/prepare_ade20k_ins_seg.py.")
            return load_coco_json(inst_json, img, name)

        DatasetCatalog.register(name, load_ins)
        MetadataCatalog.get(name).set(
            image_root=img,
            json_file=inst_json,
            evaluator_type="coco",
            **instance_metadata(ADE20K_150_CATEGORIES),
        )

    full = os.path.join(root, "ADE20K_2021_17_01")
    for split, folder in (("train", "training"), ("val", "validation")):
        img = os.path.join(full, "images_detectron2", folder)
        sem = os.path.join(full, "annotations_detectron2", folder)
        name = f"ade20k_full_sem_seg_{split}"
        DatasetCatalog.register(name, lambda img=img, sem=sem: load_sem_seg(sem, img, ".tif", ".jpg"))
        MetadataCatalog.get(name).set(
            image_root=img, sem_seg_root=sem, evaluator_type="sem_seg", ignore_label=65535, num_classes=847
        )


def _register_cityscapes(root: str) -> None:
    cs = os.path.join(root, "cityscapes")
    pan_meta = panoptic_metadata(CITYSCAPES_CATEGORIES)
    for split in ("train", "val"):
        img = os.path.join(cs, "leftImg8bit", split)
        gt = os.path.join(cs, "gtFine", split)
        name = f"cityscapes_fine_sem_seg_{split}"
        DatasetCatalog.register(name, lambda img=img, gt=gt: load_cityscapes_semantic(img, gt))
        MetadataCatalog.get(name).set(
            image_dir=img,
            gt_dir=gt,
            evaluator_type="cityscapes_sem_seg",
            ignore_label=255,
            **semantic_metadata(CITYSCAPES_CATEGORIES),
        )
        name = f"cityscapes_fine_instance_seg_{split}"
        DatasetCatalog.register(name, lambda img=img, gt=gt: load_cityscapes_instances(img, gt))
        MetadataCatalog.get(name).set(
            image_dir=img,
            gt_dir=gt,
            evaluator_type="cityscapes_instance",
            ignore_label=255,
            **instance_metadata(CITYSCAPES_CATEGORIES),
        )
        pan_dir = os.path.join(cs, "gtFine", f"cityscapes_panoptic_{split}")
        pan_json = os.path.join(cs, "gtFine", f"cityscapes_panoptic_{split}.json")
        name = f"cityscapes_fine_panoptic_{split}"
        meta = MetadataCatalog.get(name)
        DatasetCatalog.register(
            name, lambda img=img, d=pan_dir, j=pan_json, m=meta: load_cityscapes_panoptic(img, d, j, m)
        )
        meta.set(
            image_dir=img,
            gt_dir=gt,
            image_root=img,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            evaluator_type="cityscapes_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **pan_meta,
        )


def _register_mapillary(root: str) -> None:
    mv = os.path.join(root, "mapillary_vistas")
    for split, folder in (("train", "training"), ("val", "validation")):
        img = os.path.join(mv, folder, "images")
        sem = os.path.join(mv, folder, "labels")
        name = f"mapillary_vistas_sem_seg_{split}"
        DatasetCatalog.register(name, lambda img=img, sem=sem: load_sem_seg(sem, img, ".png", ".jpg"))
        MetadataCatalog.get(name).set(
            image_root=img,
            sem_seg_root=sem,
            evaluator_type="sem_seg",
            ignore_label=65,
            **semantic_metadata(MAPILLARY_VISTAS_CATEGORIES),
        )
        pan_dir = os.path.join(mv, folder, "panoptic")
        pan_json = os.path.join(pan_dir, "panoptic_2018.json")
        name = f"mapillary_vistas_panoptic_{split}"
        meta = MetadataCatalog.get(name)
        # The model needs the thing/stuff split before any file is read; panoptic_2018.json
        # numbers its categories from 1, in table order (a JSON that disagrees is reported on load).
        DatasetCatalog.register(
            name,
            lambda img=img, d=pan_dir, j=pan_json, m=meta, s=sem: load_coco_panoptic_json(j, img, d, m, s),
        )
        one_based = tuple((i + 1, *c[1:]) for i, c in enumerate(MAPILLARY_VISTAS_CATEGORIES))
        meta.set(
            image_root=img,
            panoptic_root=pan_dir,
            panoptic_json=pan_json,
            sem_seg_root=sem,
            evaluator_type="mapillary_vistas_panoptic_seg",
            ignore_label=65,
            label_divisor=1000,
            **panoptic_metadata(one_based),
        )


def register_all(root: str | None = None) -> None:
    """Register every builtin dataset under `root` (default: $DETECTRON2_DATASETS or ./datasets)."""
    root = _root() if root is None else root
    _register_coco(root)
    _register_ade20k(root)
    _register_cityscapes(root)
    _register_mapillary(root)
    _register_shapes(root)


def _register_shapes(root: str) -> None:
    """The bundled synthetic dataset (`make demo`), generated into <root>/shapes."""
    register_bundled_datasets(os.path.join(root, "shapes"))


__all__ = ["register_all"]
