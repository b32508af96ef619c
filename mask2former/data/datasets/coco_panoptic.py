"""COCO-format panoptic annotations (PNG + JSON) and their registration."""

from __future__ import annotations

import logging
import os

from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import DatasetFormatError
from ..path_check import check_dataset_paths
from .coco import entries, field, read_categories, read_json_object, require_path

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
    given. A category absent from the metadata raises DatasetFormatError naming the JSON.

    The JSON is validated while it is read: a missing or mistyped field, a duplicate category or
    segment id, a segment id outside [1, 256**3), or an image_id that the JSON's "images" (when
    it has that list) does not list raises DatasetFormatError naming the file and the PNG.
    Segment ids are checked against the PNG when a mapper reads it."""
    require_path(json_file, "Panoptic JSON", "Download the COCO-format panoptic annotations of this dataset.")
    require_path(gt_dir, "Panoptic PNG folder", "Unzip the panoptic PNGs next to the panoptic JSON.")
    data = read_json_object(json_file, "panoptic JSON")
    annotations = entries(data, "annotations", json_file)
    read_categories(data, json_file)
    thing_map, all_map = _panoptic_id_maps(meta, data)
    images = _panoptic_images(data, json_file)
    dicts = []
    for i, ann in enumerate(annotations):
        image_id = field(ann, "image_id", "id", f"annotations[{i}]", json_file)
        png = field(ann, "file_name", "str", f"Annotation of image {image_id!r}", json_file)
        if images and image_id not in images:
            raise DatasetFormatError(
                f"Annotation {png} in {json_file} has image_id {image_id!r}, which 'images' does not list"
            )
        segments = _segments(ann, png, thing_map, all_map, json_file)
        stem = os.path.splitext(png)[0]
        img = images.get(image_id)
        record = {
            "file_name": os.path.join(image_dir, img["file_name"] if img is not None else stem + image_ext),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(gt_dir, png),
            "segments_info": segments,
        }
        if img is not None and "height" in img:
            record["height"], record["width"] = int(img["height"]), int(img["width"])
        if sem_seg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_dir, stem + ".png")
        dicts.append(record)
    if not dicts:
        raise DatasetFormatError(f"No annotations in panoptic JSON {json_file}")
    dicts = check_dataset_paths(
        dicts, json_file, dict(file_name=image_dir, pan_seg_file_name=gt_dir, sem_seg_file_name=sem_seg_dir)
    )
    logger.info("Loaded %d images in COCO panoptic format from %s", len(dicts), json_file)
    return dicts


def _panoptic_images(data: dict, json_file: str) -> dict:
    """The optional "images" list as {id: entry}, each with a file name and, when it gives
    one, a valid size."""
    images = {}
    for i, img in enumerate(entries(data, "images", json_file, required=False)):
        img_id = field(img, "id", "id", f"images[{i}]", json_file)
        field(img, "file_name", "str", f"Image {img_id!r}", json_file)
        if "height" in img or "width" in img:
            field(img, "height", "size", f"Image {img_id!r}", json_file)
            field(img, "width", "size", f"Image {img_id!r}", json_file)
        images[img_id] = img
    return images


def _segments(ann: dict, png: str, thing_map: dict, all_map: dict, json_file: str) -> list[dict]:
    """The checked "segments_info" of the annotation of `png`, with contiguous category ids."""
    segments_info = ann.get("segments_info")
    if not isinstance(segments_info, list) or not all(isinstance(s, dict) for s in segments_info):
        raise DatasetFormatError(
            f"Annotation {png} in {json_file}: 'segments_info' is {segments_info!r:.60}, expected a list of objects"
        )
    seen: set[int] = set()
    return [_segment(s, j, png, seen, thing_map, all_map, json_file) for j, s in enumerate(segments_info)]


def _segment(
    s: dict, j: int, png: str, seen: set[int], thing_map: dict, all_map: dict, json_file: str
) -> dict:
    """One entry of segments_info: {id, category_id (contiguous), isthing, iscrowd, area}; its id
    is added to `seen`, the ids of the image's earlier segments."""
    seg_id = field(s, "id", "int", f"Segment {j} of {png}", json_file)
    where = f"Segment {seg_id} of {png}"
    if not 0 < seg_id < 256**3:
        raise DatasetFormatError(f"{where} in {json_file}: id must be in [1, 256**3) (R + 256 G + 256**2 B)")
    if seg_id in seen:
        raise DatasetFormatError(f"Annotation {png} in {json_file} lists segment id {seg_id} twice")
    seen.add(seg_id)
    iscrowd = s.get("iscrowd", 0)
    if not (isinstance(iscrowd, int) and iscrowd in (0, 1)):
        raise DatasetFormatError(f"{where} in {json_file}: iscrowd is {iscrowd!r}, expected 0 or 1")
    cat_id = field(s, "category_id", "int", where, json_file)
    if cat_id not in all_map:
        raise DatasetFormatError(
            f"{where} in {json_file} has category_id {cat_id}, which the metadata does not list"
        )
    return {
        "id": seg_id,
        "category_id": all_map[cat_id],
        "isthing": cat_id in thing_map,
        "iscrowd": int(iscrowd),
        "area": s.get("area"),
    }


def register_coco_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str | None = None,
    instances_json: str | None = None,
) -> None:
    """Register a COCO-format panoptic dataset. `metadata` may carry `thing_classes`,
    `stuff_classes`, `thing_dataset_id_to_contiguous_id`, `stuff_dataset_id_to_contiguous_id`
    (Detectron2's convention: contiguous ids index all classes); when it has no
    `stuff_dataset_id_to_contiguous_id`, they are read from the JSON's `categories` now (no
    PNG is read), so a model can be built right after registering. `sem_seg_root` adds
    semantic labels (for SemSegEvaluator); `instances_json` allows COCO instance AP on the same
    images."""
    meta = MetadataCatalog.get(name)
    if (
        "stuff_dataset_id_to_contiguous_id" not in metadata
        and "stuff_dataset_id_to_contiguous_id" not in meta
    ):
        require_path(panoptic_json, "Panoptic JSON", f"Check the panoptic_json given for dataset {name!r}.")
        data = read_json_object(panoptic_json, "panoptic JSON")
        read_categories(data, panoptic_json)
        meta.set(**{k: v for k, v in metadata.items() if k in ("thing_classes", "stuff_classes")})
        _panoptic_id_maps(meta, data)
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
