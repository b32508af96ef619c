"""COCO-format panoptic annotations (PNG + JSON) and their registration."""

from __future__ import annotations

import json
import logging
import os

from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import DatasetFormatError
from .coco import require_path

logger = logging.getLogger(__name__)


def _panoptic_id_maps(meta, json_data: dict) -> tuple[dict, dict]:
    """(thing map, all-classes map) from the metadata, or from the JSON's categories (in JSON
    order, `isthing` as the JSON says) when the metadata has none; they are then set on it."""
    if "stuff_dataset_id_to_contiguous_id" in meta:
        return meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id
    cats = json_data["categories"]
    all_map = {c["id"]: i for i, c in enumerate(cats)}
    thing_map = {c["id"]: i for i, c in enumerate(cats) if c.get("isthing", 1)}
    names = [c["name"] for c in cats]
    if "stuff_classes" in meta and len(meta.stuff_classes) != len(names):
        raise DatasetFormatError(
            f"The metadata of {meta.name!r} lists {len(meta.stuff_classes)} classes but its panoptic "
            f"JSON has {len(names)} categories"
        )
    if "stuff_classes" not in meta:
        meta.set(thing_classes=names, stuff_classes=names)
    meta.set(thing_dataset_id_to_contiguous_id=thing_map, stuff_dataset_id_to_contiguous_id=all_map)
    return thing_map, all_map


def load_coco_panoptic_json(
    json_file: str,
    image_dir: str,
    gt_dir: str,
    meta,
    sem_seg_dir: str | None = None,
    image_ext: str = ".jpg",
) -> list[dict]:
    """Read a COCO panoptic JSON. Each dict: `file_name`, `image_id`, `height`/`width` (when the
    JSON lists the image), `pan_seg_file_name`, `segments_info` = list of {`id`, `category_id`
    (contiguous), `isthing`, `iscrowd`, `area`}, and `sem_seg_file_name` when `sem_seg_dir` is
    given. A category absent from the metadata raises DatasetFormatError naming the JSON."""
    require_path(json_file, "Panoptic JSON", "Download the COCO-format panoptic annotations of this dataset.")
    require_path(gt_dir, "Panoptic PNG folder", "Unzip the panoptic PNGs next to the panoptic JSON.")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"Cannot parse panoptic JSON {json_file}: {e}") from e
    for key in ("annotations", "categories"):
        if key not in data:
            raise DatasetFormatError(f"Panoptic JSON {json_file} has no {key!r} list")
    thing_map, all_map = _panoptic_id_maps(meta, data)
    images = {img["id"]: img for img in data.get("images", [])}
    dicts = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        stem = os.path.splitext(ann["file_name"])[0]
        img = images.get(image_id)
        image_file = img["file_name"] if img is not None else stem + image_ext
        segments = []
        for s in ann["segments_info"]:
            if s["category_id"] not in all_map:
                raise DatasetFormatError(
                    f"Segment {s['id']} of {ann['file_name']} in {json_file} has category_id "
                    f"{s['category_id']}, which the metadata does not list"
                )
            segments.append(
                {
                    "id": int(s["id"]),
                    "category_id": all_map[s["category_id"]],
                    "isthing": s["category_id"] in thing_map,
                    "iscrowd": int(s.get("iscrowd", 0)),
                    "area": s.get("area"),
                }
            )
        record = {
            "file_name": os.path.join(image_dir, image_file),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": segments,
        }
        if img is not None and "height" in img:
            record["height"], record["width"] = int(img["height"]), int(img["width"])
        if sem_seg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_dir, stem + ".png")
        dicts.append(record)
    if not dicts:
        raise DatasetFormatError(f"No annotations in panoptic JSON {json_file}")
    logger.info("Loaded %d images in COCO panoptic format from %s", len(dicts), json_file)
    return dicts


def register_coco_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str | None = None,
    instances_json: str | None = None,
) -> None:
    """Register a COCO-format panoptic dataset (reads no file now). `metadata` may carry
    `thing_classes`, `stuff_classes`, `thing_dataset_id_to_contiguous_id`,
    `stuff_dataset_id_to_contiguous_id` (Detectron2's convention: contiguous ids index all
    classes); when it does not, they come from the JSON's `categories` on first load.
    `sem_seg_root` adds semantic labels (for SemSegEvaluator); `instances_json` allows COCO
    instance AP on the same images."""
    meta = MetadataCatalog.get(name)
    DatasetCatalog.register(
        name, lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, meta, sem_seg_root)
    )
    defaults = {
        "panoptic_root": panoptic_root,
        "image_root": image_root,
        "panoptic_json": panoptic_json,
        "evaluator_type": "coco_panoptic_seg",
        "ignore_label": 255,
        "label_divisor": 1000,
    }
    if instances_json:
        defaults["json_file"] = instances_json
    if sem_seg_root:
        defaults["sem_seg_root"] = sem_seg_root
    meta.set(**{**defaults, **metadata})


__all__ = ["load_coco_panoptic_json", "register_coco_panoptic"]
