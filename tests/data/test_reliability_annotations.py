"""Malformed annotation files, fuzz-style: a small valid COCO instances dataset and a small
valid COCO panoptic dataset (JSON + PNGs in tmp_path) go through a fixed, seeded list of
mutations (truncated text, each required field removed, wrong types, ids that point nowhere,
bad sizes, bad polygons and RLEs). Loading and then mapping every mutated file must end in
DatasetFormatError or FileNotFoundError whose message names the offending file, never in a
KeyError / TypeError / IndexError from inside a library. The outcomes are listed in
docs/FAULTS.md."""

from __future__ import annotations

import copy
import json
import logging
import random

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data import (
    DatasetFormatError,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    Metadata,
    load_coco_json,
    load_coco_panoptic_json,
)
from mask2former.data.detection_utils import id2rgb

H, W = 24, 32
CLEAR_ERRORS = (DatasetFormatError, FileNotFoundError)
BAD_TYPES = {"str": "x7", "dict": {}, "null": None, "list": [], "bool": True, "float": 1.5}


# ---------------------------------------------------------------- valid datasets


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    if compressed:
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed COCO RLE: column-major runs
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [H, W], "counts": counts}


def coco_instances() -> dict:
    """Two images; a polygon, an uncompressed RLE and a compressed RLE annotation."""
    m = np.zeros((H, W), bool)
    m[12:20, 2:10] = True
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4, 2, 12, 8],
             "segmentation": [[4, 2, 16, 2, 16, 10, 4, 10]], "area": 96.0},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [2, 12, 8, 8],
             "segmentation": _rle(m, compressed=False), "area": 64.0},
            {"id": 12, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [2, 12, 8, 8],
             "segmentation": _rle(m, compressed=True), "area": 64.0},
        ],
    }  # fmt: skip


def coco_panoptic() -> dict:
    """One image with segment 1 (a thing) and segment 2 (stuff); see `write_images`."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "categories": [
            {"id": 1, "name": "thing", "isthing": 1},
            {"id": 2, "name": "stuff", "isthing": 0},
        ],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a_pan.png",
                "segments_info": [
                    {"id": 1, "category_id": 1, "iscrowd": 0, "area": 80},
                    {"id": 2, "category_id": 2, "iscrowd": 0, "area": H * W - 80},
                ],
            }
        ],
    }


def write_images(root) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / name)
    pan = np.full((H, W), 2, np.int64)
    pan[4:12, 6:16] = 1
    Image.fromarray(id2rgb(pan)).save(root / "a_pan.png")


def _cfg():
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * W
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    cfg.INPUT.FORMAT = "RGB"
    return cfg


@pytest.fixture(scope="module")
def mappers():
    cfg = _cfg()
    return MaskFormerInstanceDatasetMapper(cfg), MaskFormerPanopticDatasetMapper(cfg)


# ---------------------------------------------------------------- mutations


def _set(path):
    """A mutation that sets data[path] to a value: `_set(("images", 0, "id"))(data, v)`."""

    def apply(data, value):
        obj = data
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        return data

    return apply


def _delete(path):
    def apply(data):
        obj = data
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
        return data

    return apply


def truncations(text: str, seed: int = 0) -> list[tuple[str, str]]:
    """Fixed offsets plus seeded random ones; every prefix shorter than the text."""
    rng = random.Random(seed)
    offsets = {0, 1, len(text) // 4, len(text) // 2, 3 * len(text) // 4, len(text) - 1}
    offsets |= {rng.randrange(1, len(text)) for _ in range(6)}
    return [(f"truncated at {o}/{len(text)}", text[:o]) for o in sorted(offsets)]


COCO_REQUIRED = [
    ("images",), ("categories",),
    ("images", 0, "id"), ("images", 0, "file_name"), ("images", 0, "height"), ("images", 0, "width"),
    ("categories", 0, "id"), ("categories", 0, "name"),
    ("annotations", 0, "image_id"), ("annotations", 0, "category_id"),
    ("annotations", 0, "bbox"), ("annotations", 0, "segmentation"),
    ("annotations", 1, "segmentation", "size"), ("annotations", 1, "segmentation", "counts"),
]  # fmt: skip

# path -> the BAD_TYPES that must be refused there (a string is a valid image / annotation id)
COCO_TYPED = {
    ("images",): ["str", "dict", "null"],
    ("categories",): ["str", "dict", "null"],
    ("annotations",): ["str", "dict"],
    ("images", 0): ["str", "list", "null"],
    ("annotations", 0): ["str", "list", "null"],
    ("images", 0, "id"): ["dict", "null", "list", "bool", "float"],
    ("images", 0, "file_name"): ["dict", "null", "list", "bool"],
    ("images", 0, "height"): ["str", "dict", "null", "list", "bool", "float"],
    ("images", 0, "width"): ["str", "dict", "null", "float"],
    ("categories", 0, "id"): ["str", "dict", "null", "float"],
    ("categories", 0, "name"): ["dict", "null", "bool"],
    ("annotations", 0, "id"): ["dict", "null", "list", "float"],
    ("annotations", 0, "image_id"): ["str", "dict", "null", "list", "float"],
    ("annotations", 0, "category_id"): ["str", "dict", "null", "list", "bool", "float"],
    ("annotations", 0, "bbox"): ["str", "dict", "null", "list", "bool"],
    ("annotations", 0, "segmentation"): ["str", "null", "dict", "bool", "float"],
    ("annotations", 0, "segmentation", 0): ["str", "dict", "null"],
    ("annotations", 0, "iscrowd"): ["str", "dict", "float"],
    ("annotations", 1, "segmentation", "size"): ["str", "dict", "null", "list"],
    ("annotations", 1, "segmentation", "counts"): ["dict", "null", "float"],
}

COCO_VALUES = [
    # ids that point nowhere, duplicates
    ("annotation image_id absent from images", ("annotations", 0, "image_id"), 999),
    ("annotation category_id absent from categories", ("annotations", 0, "category_id"), 999),
    ("duplicate image id", ("images", 1, "id"), 1),
    ("duplicate category id", ("categories", 1, "id"), 1),
    # sizes
    ("negative height", ("images", 0, "height"), -H),
    ("zero width", ("images", 0, "width"), 0),
    ("huge height (RLE disagrees)", ("images", 0, "height"), 10**9),
    ("bbox with negative width", ("annotations", 0, "bbox"), [4, 2, -12, 8]),
    ("bbox of 3 numbers", ("annotations", 0, "bbox"), [4, 2, 12]),
    ("bbox with NaN", ("annotations", 0, "bbox"), [4, 2, float("nan"), 8]),
    ("bbox with a string", ("annotations", 0, "bbox"), [4, 2, "12", 8]),
    # polygons
    ("polygon with an odd coordinate count", ("annotations", 0, "segmentation"), [[4, 2, 16, 2, 16, 10, 4]]),
    ("polygon with a string coordinate", ("annotations", 0, "segmentation"), [[4, 2, "16", 2, 16, 10]]),
    ("polygon not nested (flat list)", ("annotations", 0, "segmentation"), [4, 2, 16, 2, 16, 10]),
    ("polygon nested twice", ("annotations", 0, "segmentation"), [[[4, 2], [16, 2], [16, 10]]]),
    ("polygon with NaN", ("annotations", 0, "segmentation"), [[4, 2, 16, float("nan"), 16, 10]]),
    ("polygon with Infinity", ("annotations", 0, "segmentation"), [[4, 2, 16, float("inf"), 16, 10]]),
    # pycocotools segfaults or exhausts memory on these: they must be refused before it runs
    ("polygon coordinate 1e12", ("annotations", 0, "segmentation"), [[4, 2, 16, 1e12, 16, 10]]),
    ("polygon coordinate -1e9", ("annotations", 0, "segmentation"), [[4, 2, -1e9, 2, 16, 10]]),
    # RLE
    ("RLE size differs from the image", ("annotations", 1, "segmentation", "size"), [H + 1, W]),
    ("RLE size of one number", ("annotations", 1, "segmentation", "size"), [H]),
    ("RLE counts sum short", ("annotations", 1, "segmentation", "counts"), [5, 3]),
    ("RLE counts too long", ("annotations", 1, "segmentation", "counts"), [H * W, 5]),
    ("RLE negative count", ("annotations", 1, "segmentation", "counts"), [-5, H * W + 5]),
    ("compressed RLE size differs", ("annotations", 2, "segmentation", "size"), [H, W + 3]),
    ("crowd flag 2", ("annotations", 0, "iscrowd"), 2),
]  # fmt: skip


def coco_cases() -> list[tuple[str, str]]:
    """(case name, JSON text) for every mutation of the valid COCO instances file."""
    base = coco_instances()
    text = json.dumps(base)
    cases = truncations(text)
    cases.append(("JSON list at top level", json.dumps([base])))
    cases.append(("not UTF-8", "\udcff"))
    for path in COCO_REQUIRED:
        cases.append((f"missing {'.'.join(map(str, path))}", json.dumps(_delete(path)(copy.deepcopy(base)))))
    for path, kinds in COCO_TYPED.items():
        for kind in kinds:
            data = _set(path)(copy.deepcopy(base), BAD_TYPES[kind])
            cases.append((f"{'.'.join(map(str, path))} = {kind}", json.dumps(data)))
    for name, path, value in COCO_VALUES:
        cases.append((name, json.dumps(_set(path)(copy.deepcopy(base), value))))
    return cases


PAN_REQUIRED = [
    ("annotations",), ("categories",),
    ("images", 0, "id"), ("images", 0, "file_name"), ("images", 0, "height"),
    ("categories", 0, "id"), ("categories", 0, "name"),
    ("annotations", 0, "image_id"), ("annotations", 0, "file_name"), ("annotations", 0, "segments_info"),
    ("annotations", 0, "segments_info", 0, "id"), ("annotations", 0, "segments_info", 0, "category_id"),
]  # fmt: skip

PAN_TYPED = {
    ("annotations",): ["str", "dict", "null"],
    ("categories",): ["str", "dict", "null"],
    ("images",): ["str", "dict", "null"],
    ("annotations", 0): ["str", "list", "null"],
    ("images", 0, "id"): ["dict", "null", "list", "float"],
    ("images", 0, "height"): ["str", "null", "float"],
    ("categories", 0, "id"): ["str", "dict", "null"],
    ("annotations", 0, "image_id"): ["str", "dict", "null", "float"],
    ("annotations", 0, "file_name"): ["dict", "null", "list"],
    ("annotations", 0, "segments_info"): ["str", "dict", "null"],
    ("annotations", 0, "segments_info", 0): ["str", "list", "null"],
    ("annotations", 0, "segments_info", 0, "id"): ["str", "dict", "null", "bool", "float"],
    ("annotations", 0, "segments_info", 0, "category_id"): ["str", "dict", "null", "float"],
    ("annotations", 0, "segments_info", 0, "iscrowd"): ["str", "null", "float"],
}

PAN_VALUES = [
    ("annotation image_id absent from images", ("annotations", 0, "image_id"), 999),
    ("segment category_id absent from categories", ("annotations", 0, "segments_info", 0, "category_id"), 999),
    ("duplicate category id", ("categories", 1, "id"), 1),
    ("duplicate segment id", ("annotations", 0, "segments_info", 1, "id"), 1),
    ("segment id 0 (void)", ("annotations", 0, "segments_info", 0, "id"), 0),
    ("segment id past 256**3", ("annotations", 0, "segments_info", 0, "id"), 256**3),
    ("negative height", ("images", 0, "height"), -H),
    ("huge width (image disagrees)", ("images", 0, "width"), 10**9),
    ("PNG id absent from segments_info", ("annotations", 0, "segments_info"),
     [{"id": 1, "category_id": 1, "iscrowd": 0}]),
    ("panoptic PNG missing", ("annotations", 0, "file_name"), "missing_pan.png"),
    ("image file missing", ("images", 0, "file_name"), "missing.png"),
]  # fmt: skip


def panoptic_cases() -> list[tuple[str, str]]:
    base = coco_panoptic()
    text = json.dumps(base)
    cases = truncations(text, seed=1)
    cases.append(("JSON string at top level", json.dumps("annotations")))
    for path in PAN_REQUIRED:
        cases.append((f"missing {'.'.join(map(str, path))}", json.dumps(_delete(path)(copy.deepcopy(base)))))
    for path, kinds in PAN_TYPED.items():
        for kind in kinds:
            data = _set(path)(copy.deepcopy(base), BAD_TYPES[kind])
            cases.append((f"{'.'.join(map(str, path))} = {kind}", json.dumps(data)))
    for name, path, value in PAN_VALUES:
        cases.append((name, json.dumps(_set(path)(copy.deepcopy(base), value))))
    return cases


# ---------------------------------------------------------------- load + map each case


def _load_and_map_coco(json_file: str, root: str, mapper) -> None:
    for d in load_coco_json(json_file, root):
        mapper(d)


def _load_and_map_panoptic(json_file: str, root: str, mapper) -> None:
    for d in load_coco_panoptic_json(json_file, root, root, Metadata(name="fuzz")):
        mapper(d)


def _expect_clear_error(fn, names: tuple[str, ...], case: str) -> str:
    """fn() must raise DatasetFormatError / FileNotFoundError naming one of `names`. Any other
    exception propagates and fails the test with its own traceback."""
    with pytest.raises(CLEAR_ERRORS) as info:
        fn()
    msg = str(info.value)
    assert any(n in msg for n in names), f"{case}: message does not name the file: {msg}"
    return msg


def test_valid_files_load_and_map(tmp_path, mappers):
    """The base files are valid: every mutation below is the only thing wrong."""
    write_images(tmp_path)
    (tmp_path / "inst.json").write_text(json.dumps(coco_instances()))
    (tmp_path / "pan.json").write_text(json.dumps(coco_panoptic()))
    dicts = load_coco_json(str(tmp_path / "inst.json"), str(tmp_path))
    outs = [mappers[0](d) for d in dicts]
    assert [len(o["instances"]) for o in outs] == [2, 1]
    pan = load_coco_panoptic_json(
        str(tmp_path / "pan.json"), str(tmp_path), str(tmp_path), Metadata(name="v")
    )
    assert len(mappers[1](pan[0])["instances"]) == 2


@pytest.mark.parametrize("case, text", coco_cases(), ids=[c[0] for c in coco_cases()])
def test_malformed_coco_instances(tmp_path, mappers, case, text):
    write_images(tmp_path)
    json_file = tmp_path / "instances_fuzz.json"
    json_file.write_text(text, encoding="utf-8", errors="surrogateescape")
    _expect_clear_error(
        lambda: _load_and_map_coco(str(json_file), str(tmp_path), mappers[0]),
        ("instances_fuzz.json", "a.png", "b.png"),
        case,
    )


@pytest.mark.parametrize("case, text", panoptic_cases(), ids=[c[0] for c in panoptic_cases()])
def test_malformed_coco_panoptic(tmp_path, mappers, case, text):
    """The message names the JSON, or, for faults found when the PNG / image is read, that file."""
    write_images(tmp_path)
    json_file = tmp_path / "panoptic_fuzz.json"
    json_file.write_text(text)
    names = ("panoptic_fuzz.json", "a_pan.png", "missing_pan.png", "missing.png", "a.png")
    _expect_clear_error(
        lambda: _load_and_map_panoptic(str(json_file), str(tmp_path), mappers[1]), names, case
    )


def test_pointing_nowhere_errors_name_the_ids(tmp_path):
    """The message says which annotation and which id, not just the file."""
    write_images(tmp_path)
    data = coco_instances()
    data["annotations"][1]["image_id"] = 999
    (tmp_path / "i.json").write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"Annotation 11 in .*i\.json has image_id 999"):
        load_coco_json(str(tmp_path / "i.json"), str(tmp_path))
    data = coco_panoptic()
    data["annotations"][0]["segments_info"][1]["category_id"] = 77
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"Segment 2 of a_pan\.png in .*p\.json has category_id 77"):
        load_coco_panoptic_json(str(tmp_path / "p.json"), str(tmp_path), str(tmp_path), Metadata(name="p"))


# ---------------------------------------------------------------- what is tolerated, on purpose


def test_degenerate_polygons_dropped_with_warning(tmp_path, caplog):
    """Polygons of fewer than 3 points are dropped, as Detectron2 does (COCO has some); an
    annotation left with none is dropped too, and a warning counts them and names the file."""
    data = coco_instances()
    data["annotations"][0]["segmentation"] = [[4, 2, 16, 2]]
    (tmp_path / "deg.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="mask2former.data.datasets.coco"):
        dicts = load_coco_json(str(tmp_path / "deg.json"), str(tmp_path))
    assert [len(d["annotations"]) for d in dicts] == [1, 1]
    assert "dropped 1 annotations" in caplog.text and "deg.json" in caplog.text


def test_image_info_file_without_annotations(tmp_path, caplog):
    """A JSON without "annotations" (COCO test-dev's image-info files) loads images without
    annotations, as in Detectron2, with a warning naming the file."""
    data = coco_instances()
    del data["annotations"]
    (tmp_path / "info.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="mask2former.data.datasets.coco"):
        dicts = load_coco_json(str(tmp_path / "info.json"), str(tmp_path))
    assert [d["annotations"] for d in dicts] == [[], []]
    assert "info.json has no 'annotations'" in caplog.text


def test_panoptic_segment_absent_from_png_gives_no_target(tmp_path, mappers):
    """A segment listed in the JSON but absent from the PNG yields no instance (as a segment
    cropped away does); the reverse is an error (test_malformed_coco_panoptic)."""
    write_images(tmp_path)
    data = coco_panoptic()
    data["annotations"][0]["segments_info"].append({"id": 3, "category_id": 1, "iscrowd": 0})
    (tmp_path / "p.json").write_text(json.dumps(data))
    d = load_coco_panoptic_json(str(tmp_path / "p.json"), str(tmp_path), str(tmp_path), Metadata(name="a"))[0]
    assert mappers[1](d)["instances"].gt_classes.tolist() == [0, 1]


# ---------------------------------------------------------------- dicts built by users


MAPPER_DICT_CASES = [
    ("no segmentation", lambda a: a.pop("segmentation")),
    ("no category_id", lambda a: a.pop("category_id")),
    ("category_id string", lambda a: a.update(category_id="1")),
    ("category_id out of range", lambda a: a.update(category_id=5)),
    ("segmentation string", lambda a: a.update(segmentation="abc")),
    ("segmentation empty dict", lambda a: a.update(segmentation={})),
    ("polygon odd", lambda a: a.update(segmentation=[[1, 2, 3, 4, 5, 6, 7]])),
    ("polygon strings", lambda a: a.update(segmentation=[["a", "b", "c", "d", "e", "f"]])),
    ("polygon NaN", lambda a: a.update(segmentation=[[4, 2, 16, float("nan"), 16, 10]])),
    ("polygon coordinate 1e12", lambda a: a.update(segmentation=[[4, 2, 16, 1e12, 16, 10]])),
    ("RLE wrong size", lambda a: a.update(segmentation={"size": [H, W + 1], "counts": [H * (W + 1)]})),
    ("RLE counts short", lambda a: a.update(segmentation={"size": [H, W], "counts": [5, 3]})),
    ("RLE counts negative", lambda a: a.update(segmentation={"size": [H, W], "counts": [-5, H * W + 5]})),
    ("RLE compressed garbage", lambda a: a.update(segmentation={"size": [H, W], "counts": "zzzz!!"})),
]


@pytest.mark.parametrize("case, mutate", MAPPER_DICT_CASES, ids=[c[0] for c in MAPPER_DICT_CASES])
def test_mapper_refuses_malformed_user_dicts(tmp_path, mappers, case, mutate):
    """Custom datasets registered with DatasetCatalog skip the JSON loader: the mapper itself
    must refuse a bad annotation dict with a message naming the image."""
    write_images(tmp_path)
    ann = {
        "category_id": 0,
        "iscrowd": 0,
        "segmentation": [[4, 2, 16, 2, 16, 10, 4, 10]],
        "bbox": [4, 2, 12, 8],
    }
    mutate(ann)
    d = {"file_name": str(tmp_path / "a.png"), "height": H, "width": W, "image_id": 1, "annotations": [ann]}
    _expect_clear_error(lambda: mappers[0](d), ("a.png",), case)
