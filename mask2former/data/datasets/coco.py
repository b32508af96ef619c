"""COCO-format instance annotations, semantic-segmentation folders, and their registration."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import DatasetFormatError
from ..path_check import check_dataset_paths

logger = logging.getLogger(__name__)

BBOX_MODE_XYWH_ABS = 1  # Detectron2's BoxMode.XYWH_ABS


def require_path(path: str, what: str, how: str) -> None:
    """Raise FileNotFoundError naming `path` and the preparation step `how` when it is missing."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}. {how}")


def read_json_object(json_file: str, what: str) -> dict:
    """Parse `json_file` and return its top-level object; DatasetFormatError naming the file for
    text that is not JSON (e.g. truncated) or JSON that is not an object."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"Cannot parse {what} {json_file}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{what} {json_file} holds a JSON {type(data).__name__}, not an object")
    return data


def entries(data: dict, key: str, json_file: str, required: bool = True) -> list[dict]:
    """data[key] as a list of JSON objects; DatasetFormatError naming the file otherwise."""
    if key not in data:
        if required:
            raise DatasetFormatError(f"{json_file} has no {key!r} list")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise DatasetFormatError(f"{json_file}: {key!r} is a {type(value).__name__}, expected a list")
    for i, e in enumerate(value):
        if not isinstance(e, dict):
            raise DatasetFormatError(f"{json_file}: {key}[{i}] is a {type(e).__name__}, expected an object")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def field(entry: dict, key: str, kind: str, where: str, json_file: str):
    """entry[key] checked against `kind`: "int", "id" (int or str), "size" (int >= 1), "str".
    Integral floats (480.0) are accepted as ints. DatasetFormatError naming `where` and the file."""
    if key not in entry:
        raise DatasetFormatError(f"{where} in {json_file} has no {key!r}")
    v = entry[key]
    if kind == "str":
        ok = isinstance(v, str) and v != ""
    elif kind == "id":
        ok = _is_int(v) or isinstance(v, str)
    else:
        ok = _is_int(v) and (kind != "size" or v >= 1)
    if not ok:
        expected = {"str": "a non-empty string", "id": "an integer or string", "int": "an integer"}
        raise DatasetFormatError(
            f"{where} in {json_file}: {key!r} is {v!r}, expected {expected.get(kind, 'a positive integer')}"
        )
    return int(v) if kind in ("int", "size") or (kind == "id" and not isinstance(v, str)) else v


def _check_bbox(bbox, where: str, json_file: str) -> list[float]:
    try:
        box = np.asarray(bbox)
    except ValueError as e:  # ragged nesting
        raise DatasetFormatError(f"{where} in {json_file}: bbox {bbox!r} is not 4 numbers") from e
    if box.shape != (4,) or box.dtype.kind not in "iuf" or not np.isfinite(box).all() or (box[2:] < 0).any():
        raise DatasetFormatError(f"{where} in {json_file}: bbox {bbox!r} is not [x, y, w, h] with w, h >= 0")
    return list(bbox)


def _far_outside(poly: np.ndarray, hw: tuple[int, int]) -> bool:
    """Polygon coordinates beyond one image size outside the image: pycocotools' rasteriser
    allocates in proportion to them and crashes the process (segfault / out of memory) on
    huge ones (1e12), so they are refused before it sees them."""
    h, w = hw
    xs, ys = poly[0::2], poly[1::2]
    return bool(xs.min() < -w or xs.max() > 2 * w or (ys.size and (ys.min() < -h or ys.max() > 2 * h)))


def _check_segmentation(segm, hw: tuple[int, int], where: str, json_file: str):
    """Polygons (list of flat [x0, y0, x1, y1, ...] lists) or RLE ({"size": [H, W], "counts"}).
    Returns the segmentation with polygons of fewer than 3 points removed (as Detectron2 does);
    an empty list when none is left."""
    if isinstance(segm, list):
        kept = []
        for j, poly in enumerate(segm):
            try:
                p = np.asarray(poly)
            except ValueError as e:  # ragged nesting
                raise DatasetFormatError(
                    f"{where} in {json_file}: polygon {j} is not a list of numbers"
                ) from e
            if p.ndim != 1 or p.dtype.kind not in "iuf" or not np.isfinite(p).all():
                raise DatasetFormatError(
                    f"{where} in {json_file}: polygon {j} is not a flat list of finite numbers [x0, y0, x1, y1, ...]"
                )
            if len(p) and _far_outside(p, hw):
                raise DatasetFormatError(
                    f"{where} in {json_file}: polygon {j} has coordinates far outside its "
                    f"{hw[0]}x{hw[1]} image (x in [{p[0::2].min()}, {p[0::2].max()}], "
                    f"y in [{p[1::2].min()}, {p[1::2].max()}])"
                )
            if len(p) % 2:
                raise DatasetFormatError(
                    f"{where} in {json_file}: polygon {j} has an odd number ({len(p)}) of coordinates"
                )
            if len(p) >= 6:
                kept.append(poly)
        return kept
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
            raise DatasetFormatError(
                f"{where} in {json_file}: RLE has no valid 'size' [height, width]: {size!r}"
            )
        if [int(s) for s in size] != list(hw):
            raise DatasetFormatError(
                f"{where} in {json_file}: RLE size {size} does not match its image's {hw[0]}x{hw[1]}"
            )
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
                raise DatasetFormatError(
                    f"{where} in {json_file}: RLE counts are not non-negative integers summing to {hw[0]}*{hw[1]}"
                )
        elif not isinstance(counts, str):
            raise DatasetFormatError(
                f"{where} in {json_file}: RLE 'counts' is {type(counts).__name__}, expected a list or string"
            )
        return segm
    raise DatasetFormatError(
        f"{where} in {json_file}: segmentation is a {type(segm).__name__}, expected polygons (list) or RLE (dict)"
    )


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: str | None = None,
    skip_category_ids: tuple[int, ...] = (),
) -> list[dict]:
    """Read a COCO instances JSON (polygons, RLE and crowd regions) into dataset dicts.

    Each dict: `file_name`, `height`, `width`, `image_id`, `annotations` = list of
    {`bbox` [x, y, w, h], `bbox_mode`, `category_id` (contiguous), `segmentation`, `iscrowd`}.
    When `dataset_name` is given and its metadata has no class list yet, the classes are taken
    from the JSON (sorted by id), as Detectron2 does; an annotation whose category is absent from
    the metadata raises DatasetFormatError naming the JSON file.

    The file is validated while it is read: a missing or mistyped field, a duplicate image or
    category id, an id that points nowhere (image, category), a non-positive image size, a
    polygon with an odd number of coordinates or an RLE whose size differs from its image's raises
    DatasetFormatError naming the file and the image / annotation. A JSON without
    "annotations" (an image-info file such as COCO's test-dev) gives images without
    annotations, as in Detectron2. Polygons of fewer than 3 points are dropped, and so are
    annotations left without one, with a warning that counts them (as in Detectron2).
    Annotations of `skip_category_ids` (placeholder categories dropped at registration) are
    skipped, with a warning that counts them. Annotation ids are optional and may repeat.
    """
    require_path(json_file, "COCO annotation file", "Check the dataset's json_file path.")
    data = read_json_object(json_file, "COCO annotation file")
    cat_names = read_categories(data, json_file)
    images = entries(data, "images", json_file)
    if "annotations" not in data:
        logger.warning(
            "%s has no 'annotations': its %d images load without annotations", json_file, len(images)
        )
    anns = entries(data, "annotations", json_file, required=False)
    id_map = _thing_id_map(cat_names, dataset_name)

    records = {}
    for i, img in enumerate(images):
        img_id = field(img, "id", "id", f"images[{i}]", json_file)
        if img_id in records:
            raise DatasetFormatError(f"{json_file} lists image id {img_id!r} twice")
        records[img_id] = _image_record(img, img_id, image_root, json_file)

    dropped = skipped = 0
    for i, ann in enumerate(anns):
        # annotation ids are not used for training; they may start at 0, repeat or be missing
        # (COCOEvaluator renumbers them for pycocotools)
        ann_id = field(ann, "id", "id", f"annotations[{i}]", json_file) if "id" in ann else None
        where = f"Annotation {ann_id!r}" if ann_id is not None else f"annotations[{i}]"
        if ann.get("category_id") in skip_category_ids:
            skipped += 1
            continue
        img_id, instance = _check_annotation(ann, where, records, cat_names, id_map, dataset_name, json_file)
        if ann.get("ignore", 0):
            continue
        rec = records[img_id]
        instance = _with_segmentation(instance, ann, (rec["height"], rec["width"]), where, json_file)
        if instance is None:
            dropped += 1
        else:
            rec["annotations"].append(instance)
    if dropped:
        logger.warning(
            "%s: dropped %d annotations whose polygons all have fewer than 3 points", json_file, dropped
        )
    if skipped:
        logger.warning(
            "%s: skipped %d annotations of the dropped placeholder categories %s",
            json_file,
            skipped,
            sorted(skip_category_ids),
        )
    dicts = [records[k] for k in sorted(records, key=lambda k: (isinstance(k, str), k))]
    dicts = check_dataset_paths(dicts, json_file, {"file_name": image_root})
    logger.info("Loaded %d images in COCO format from %s", len(dicts), json_file)
    return dicts


def read_categories(data: dict, json_file: str) -> dict[int, str]:
    """The JSON's "categories" as {id: name}; DatasetFormatError for a mistyped or repeated id."""
    cat_names = {}
    for i, c in enumerate(entries(data, "categories", json_file)):
        cid = field(c, "id", "int", f"categories[{i}]", json_file)
        if cid in cat_names:
            raise DatasetFormatError(f"{json_file} lists category id {cid} twice")
        cat_names[cid] = field(c, "name", "str", f"Category {cid}", json_file)
    return cat_names


def _thing_id_map(cat_names: dict[int, str], dataset_name: str | None) -> dict[int, int]:
    """Dataset category id -> contiguous id: from the metadata of `dataset_name` when it has a
    map, else the JSON's ids in sorted order (then set on the metadata with the class names)."""
    id_map = {cid: i for i, cid in enumerate(sorted(cat_names))}
    if dataset_name is None:
        return id_map
    meta = MetadataCatalog.get(dataset_name)
    if "thing_dataset_id_to_contiguous_id" in meta:
        return meta.thing_dataset_id_to_contiguous_id
    meta.set(
        thing_classes=[cat_names[c] for c in sorted(cat_names)], thing_dataset_id_to_contiguous_id=id_map
    )
    return id_map


def _image_record(img: dict, img_id, image_root: str, json_file: str) -> dict:
    """The dataset dict of one "images" entry, its annotations still empty."""
    where = f"Image {img_id!r}"
    return {
        "file_name": os.path.join(image_root, field(img, "file_name", "str", where, json_file)),
        "height": field(img, "height", "size", where, json_file),
        "width": field(img, "width", "size", where, json_file),
        "image_id": img_id,
        "annotations": [],
    }


def _check_annotation(
    ann: dict,
    where: str,
    records: dict,
    cat_names: dict,
    id_map: dict,
    dataset_name: str | None,
    json_file: str,
) -> tuple:
    """(image id, {bbox, bbox_mode, category_id (contiguous), iscrowd}) of an annotation whose
    ids point somewhere and that has a segmentation; DatasetFormatError naming `where` and the
    file otherwise. The segmentation is checked by `_with_segmentation`, which needs the image."""
    img_id = field(ann, "image_id", "id", where, json_file)
    if img_id not in records:
        raise DatasetFormatError(
            f"{where} in {json_file} has image_id {img_id!r}, which 'images' does not list"
        )
    cat_id = field(ann, "category_id", "int", where, json_file)
    if cat_id not in cat_names:
        raise DatasetFormatError(
            f"{where} in {json_file} has category_id {cat_id}, which 'categories' does not list"
        )
    if cat_id not in id_map:
        raise DatasetFormatError(
            f"{where} in {json_file} has category_id {cat_id}, "
            f"which the metadata of {dataset_name or 'this dataset'} does not list"
        )
    if "segmentation" not in ann or ann["segmentation"] is None:
        raise DatasetFormatError(f"{where} in {json_file} has no segmentation")
    if "bbox" not in ann:
        raise DatasetFormatError(f"{where} in {json_file} has no 'bbox'")
    bbox = _check_bbox(ann["bbox"], where, json_file)
    iscrowd = ann.get("iscrowd", 0)
    if not (_is_int(iscrowd) and iscrowd in (0, 1)):
        raise DatasetFormatError(f"{where} in {json_file}: iscrowd is {iscrowd!r}, expected 0 or 1")
    instance = {
        "bbox": bbox,
        "bbox_mode": BBOX_MODE_XYWH_ABS,
        "category_id": id_map[cat_id],
        "iscrowd": int(iscrowd),
    }
    return img_id, instance


def _with_segmentation(
    instance: dict, ann: dict, hw: tuple[int, int], where: str, json_file: str
) -> dict | None:
    """`instance` with the checked segmentation of `ann` (image size `hw`); None when no polygon
    of at least 3 points is left."""
    segm = _check_segmentation(ann["segmentation"], hw, where, json_file)
    return {**instance, "segmentation": segm} if segm else None


def load_sem_seg(gt_root: str, image_root: str, gt_ext: str = ".png", image_ext: str = ".jpg") -> list[dict]:
    """Pair images with label images by file stem. Each dict: `file_name`, `sem_seg_file_name`.
    A label without an image is an error naming both folders."""
    require_path(image_root, "Image folder", "Check the dataset's image_root.")
    require_path(
        gt_root, "Semantic label folder", "Run the dataset's preparation script (see datasets/README)."
    )
    gts = sorted(f for f in os.listdir(gt_root) if f.endswith(gt_ext))
    images = {f[: -len(image_ext)] for f in os.listdir(image_root) if f.endswith(image_ext)}
    missing = [g for g in gts if g[: -len(gt_ext)] not in images]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} label files in {gt_root} have no image in {image_root} "
            f"(first: {missing[0]} -> {missing[0][: -len(gt_ext)] + image_ext})"
        )
    dicts = [
        {
            "file_name": os.path.join(image_root, g[: -len(gt_ext)] + image_ext),
            "sem_seg_file_name": os.path.join(gt_root, g),
        }
        for g in gts
    ]
    dicts = check_dataset_paths(dicts, gt_root, {"file_name": image_root, "sem_seg_file_name": gt_root}, True)
    logger.info("Loaded %d images with semantic labels from %s", len(dicts), gt_root)
    return dicts


PLACEHOLDER_POLICIES = ("auto", "keep", "drop")


def is_placeholder_category(name: str) -> bool:
    """A category that marks "no object" rather than a class: labelme's `_background_` (and
    `background`, `__background__`)."""
    return name.strip("_ ").lower() == "background"


def read_coco_categories(json_file: str) -> tuple[dict[int, str], dict[int, int]]:
    """({category id: name}, {category id: number of annotations}) of a COCO instances JSON:
    its categories and the annotations' category_id fields only (no segmentation is decoded)."""
    data = read_json_object(json_file, "COCO annotation file")
    cat_names = read_categories(data, json_file)
    counts = dict.fromkeys(cat_names, 0)
    for ann in entries(data, "annotations", json_file, required=False):
        cat = ann.get("category_id")
        if cat in counts:
            counts[cat] += 1
    return cat_names, counts


def coco_instances_metadata(
    name: str, json_file: str, placeholder_categories: str = "auto"
) -> tuple[dict, tuple[int, ...]]:
    """(thing_classes and thing_dataset_id_to_contiguous_id from the JSON's categories, the
    category ids dropped). A placeholder category (`is_placeholder_category`) is reported with
    the choice made: with "auto" it is dropped when no annotation uses it and kept with a
    warning otherwise; "keep" keeps it, "drop" drops it and its annotations."""
    if placeholder_categories not in PLACEHOLDER_POLICIES:
        raise ValueError(
            f"placeholder_categories is {placeholder_categories!r}; expected one of {PLACEHOLDER_POLICIES}"
        )
    cat_names, counts = read_coco_categories(json_file)
    dropped = []
    for cid, cname in sorted(cat_names.items()):
        if not is_placeholder_category(cname):
            continue
        used = counts[cid]
        drop = placeholder_categories == "drop" or (placeholder_categories == "auto" and not used)
        if drop:
            dropped.append(cid)
        # a warning either way: registration usually runs before logging is set up, and Python
        # prints warnings even then
        logger.warning(
            "Dataset %r: category %d %r of %s is a placeholder used by %d annotations: %s "
            "(register_coco_instances(..., placeholder_categories='keep'|'drop'|'auto') decides)",
            name,
            cid,
            cname,
            json_file,
            used,
            ("dropped with its annotations" if used else "dropped from the classes")
            if drop
            else "KEPT as a trainable class",
        )
    kept = [cid for cid in sorted(cat_names) if cid not in dropped]
    metadata = {
        "thing_classes": [cat_names[cid] for cid in kept],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, cid in enumerate(kept)},
    }
    return metadata, tuple(dropped)


def register_coco_instances(
    name: str, metadata: dict, json_file: str, image_root: str, placeholder_categories: str = "auto"
) -> None:
    """Register a dataset in COCO instances format.

    When `metadata` has no `thing_classes`, the class names and ids are read from the JSON's
    categories now (no mask is decoded), so `MetadataCatalog.get(name).thing_classes` is set
    and a model can be built right after registering. A placeholder category such as labelme's
    `_background_` is reported and handled by `placeholder_categories` (see
    `coco_instances_metadata`). Give `thing_classes` and `thing_dataset_id_to_contiguous_id` to
    fix the class order yourself (the JSON is then read only when the dataset is loaded).
    """
    skip: tuple[int, ...] = ()
    classes: dict = {}
    if "thing_classes" not in metadata:
        require_path(json_file, "COCO annotation file", f"Check the json_file given for dataset {name!r}.")
        classes, skip = coco_instances_metadata(name, json_file, placeholder_categories)
    if skip:
        DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name, skip))
    else:
        DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    defaults = {"json_file": json_file, "image_root": image_root, "evaluator_type": "coco"}
    MetadataCatalog.get(name).set(**{**defaults, **classes, **metadata})


def register_sem_seg(
    name: str,
    image_root: str,
    sem_seg_root: str,
    stuff_classes: list[str],
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
) -> None:
    """Register a semantic-segmentation folder pair: label PNGs hold class indices into
    `stuff_classes`, `ignore_label` marks void pixels."""
    DatasetCatalog.register(name, lambda: load_sem_seg(sem_seg_root, image_root, gt_ext, image_ext))
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=ignore_label,
    )


__all__ = [
    "entries",
    "field",
    "load_coco_json",
    "load_sem_seg",
    "coco_instances_metadata",
    "is_placeholder_category",
    "read_categories",
    "read_coco_categories",
    "read_json_object",
    "register_coco_instances",
    "register_sem_seg",
    "require_path",
]
