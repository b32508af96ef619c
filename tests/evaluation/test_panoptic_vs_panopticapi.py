"""COCOPanopticEvaluator against the official panopticapi (package panopticapi-lite 0.2.0, the
COCO panoptic API's code; `make setup` installs it with --no-deps).

Ground truth (PNG + JSON) is generated here; predictions are the ground truth perturbed in every
way panopticapi treats specially (dropped, merged, split, shifted, eroded, dilated, relabelled,
spurious, crowd-overlapping and all-void segments). Both score the same files and must agree
exactly on PQ, SQ and RQ: all, things, stuff and per class."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from panopticapi.evaluation import PQStat as OraclePQStat
from panopticapi.evaluation import pq_compute_single_core
from PIL import Image
from scipy import ndimage

from mask2former.data import DatasetCatalog, MetadataCatalog, register_coco_panoptic
from mask2former.data.detection_utils import id2rgb
from mask2former.evaluation import COCOPanopticEvaluator
from mask2former.utils.testing import unique_dataset_name

H, W = 48, 64
# non-contiguous dataset ids, things and stuff interleaved
CATEGORIES = [
    {"id": 3, "name": "cat", "isthing": 1},
    {"id": 5, "name": "grass", "isthing": 0},
    {"id": 8, "name": "dog", "isthing": 1},
    {"id": 13, "name": "sky", "isthing": 0},
    {"id": 21, "name": "car", "isthing": 1},
]
THINGS = [c["id"] for c in CATEGORIES if c["isthing"]]
PERTURBATIONS = ("keep", "drop", "split", "shift", "erode", "dilate", "relabel")


def _gt_image(rng, image_index: int) -> tuple[np.ndarray, list[dict]]:
    """Segment ids [H, W] and segments_info: two stuff bands, 2-4 things, a void strip, and on
    every other image a crowd region."""
    ids = np.zeros((H, W), np.int64)
    segments = []
    next_id = int(rng.integers(1, 5000))

    def add(mask, category, iscrowd=0):
        nonlocal next_id
        next_id += int(rng.integers(1, 70000))  # ids spread over the three PNG channels
        ids[mask] = next_id
        segments.append({"id": next_id, "category_id": category, "iscrowd": iscrowd})

    rows = np.arange(H)[:, None].repeat(W, 1)
    split = int(rng.integers(H // 3, 2 * H // 3))
    add(rows < split, 13)
    add(rows >= split, 5)
    for _ in range(int(rng.integers(2, 5))):
        y, x = int(rng.integers(0, H - 10)), int(rng.integers(0, W - 12))
        mask = np.zeros((H, W), bool)
        mask[y : y + int(rng.integers(6, 16)), x : x + int(rng.integers(6, 20))] = True
        add(mask, int(rng.choice(THINGS)))
    if image_index % 2 == 0:
        mask = np.zeros((H, W), bool)
        mask[H - 12 : H - 2, 2:20] = True
        add(mask, 8, iscrowd=1)
    ids[:, W - 4 :] = 0  # void strip
    present = set(np.unique(ids).tolist())
    segments = [dict(s, area=int((ids == s["id"]).sum())) for s in segments if s["id"] in present]
    return ids, segments


def _perturb(rng, gt: np.ndarray, gt_segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """A prediction made from the ground truth: every segment perturbed in one of
    PERTURBATIONS, two same-category things merged when possible, a spurious segment, a segment
    on a crowd region of its category, and one lying entirely on void."""
    pred = np.zeros_like(gt)
    info = {}
    next_id = int(rng.integers(1, 1000))

    def paint(mask, category):
        nonlocal next_id
        next_id += int(rng.integers(1, 30000))
        pred[mask] = next_id
        info[next_id] = category

    things_by_cat: dict[int, list[dict]] = {}
    for s in gt_segments:
        mask = gt == s["id"]
        category = s["category_id"]
        if s["iscrowd"]:
            inner = ndimage.binary_erosion(mask, iterations=1)
            paint(inner, category)  # a prediction on the crowd region of its own category
            continue
        if category in THINGS:
            things_by_cat.setdefault(category, []).append(s)
        kind = PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]
        if kind == "drop":
            continue
        if kind == "split":
            cols = np.nonzero(mask.any(0))[0]
            left = mask & (np.arange(W)[None, :] < cols[len(cols) // 2])
            paint(left, category)
            paint(mask & ~left, category)
            continue
        if kind == "shift":
            mask = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        elif kind == "erode":
            mask = ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
        elif kind == "dilate":
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4)))
        elif kind == "relabel":
            category = int(rng.choice([c["id"] for c in CATEGORIES if c["id"] != category]))
        paint(mask, category)
    for category, segs in things_by_cat.items():
        if len(segs) >= 2:  # merged: one prediction over two ground-truth things
            paint(np.isin(gt, [segs[0]["id"], segs[1]["id"]]), category)
            break
    spurious = np.zeros((H, W), bool)
    y, x = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 12))
    spurious[y : y + 7, x : x + 9] = True
    paint(spurious, int(rng.choice(THINGS)))
    void_only = np.zeros((H, W), bool)
    void_only[5:15, W - 4 :] = True
    paint(void_only, int(rng.choice(THINGS)))  # all-void: never a false positive
    present = set(np.unique(pred).tolist()) - {0}
    segments = [{"id": i, "category_id": c} for i, c in info.items() if i in present]
    return pred, segments


def _write_dataset(root, n_images: int, seed: int) -> tuple[dict, list, list]:
    """Writes gt PNGs + JSON; returns (paths for register_coco_panoptic, gt annotations,
    [(pred ids, pred segments)])."""
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir, image_dir = root / "gt", root / "pred", root / "images"
    for d in (gt_dir, pred_dir, image_dir):
        d.mkdir()
    annotations, images, predictions = [], [], []
    for i in range(n_images):
        gt, gt_segments = _gt_image(rng, i)
        if i == 1:  # listed in the JSON, absent from the PNG: panopticapi counts a miss
            gt_segments.append({"id": 99, "category_id": 21, "iscrowd": 0, "area": 30})
        if i == 2:  # JSON areas that disagree with the PNG: panopticapi's IoU uses the JSON's
            for s in gt_segments:
                s["area"] += 40 * (1 - s["iscrowd"])
        name = f"{i:04d}.png"
        Image.fromarray(id2rgb(gt)).save(gt_dir / name)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image_dir / f"{i:04d}.jpg")
        annotations.append({"image_id": 100 + i, "file_name": name, "segments_info": gt_segments})
        images.append({"id": 100 + i, "file_name": f"{i:04d}.jpg", "height": H, "width": W})
        pred, pred_segments = _perturb(rng, gt, gt_segments)
        Image.fromarray(id2rgb(pred)).save(pred_dir / name)
        predictions.append((pred, pred_segments))
    gt_json = root / "gt.json"
    gt_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    paths = {"image_root": str(image_dir), "panoptic_root": str(gt_dir), "panoptic_json": str(gt_json)}
    return paths, annotations, predictions


def _oracle(annotations, predictions, root) -> tuple[dict, dict]:
    """panopticapi's per-image loop (one core, images in order) and its averages."""
    pairs = [
        (gt_ann, {"image_id": gt_ann["image_id"], "file_name": gt_ann["file_name"], "segments_info": segs})
        for gt_ann, (_, segs) in zip(annotations, predictions)
    ]
    categories = {c["id"]: c for c in CATEGORIES}
    stat: OraclePQStat = pq_compute_single_core(0, pairs, str(root / "gt"), str(root / "pred"), categories)
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = stat.pq_average(categories, isthing=isthing)
        if isthing is None:
            results["per_class"] = per_class
    return results, stat


def _evaluate(name: str, annotations, predictions) -> dict:
    meta = MetadataCatalog.get(name)
    to_contiguous = meta.stuff_dataset_id_to_contiguous_id
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id)
    ev = COCOPanopticEvaluator(name)
    ev.reset()
    for ann, (pred, segs) in zip(annotations, predictions):
        segments_info = [
            {
                "id": s["id"],
                "category_id": to_contiguous[s["category_id"]],
                "isthing": s["category_id"] in thing_ids,
            }
            for s in segs
        ]
        ev.process(
            [{"image_id": ann["image_id"]}], [{"panoptic_seg": (torch.from_numpy(pred), segments_info)}]
        )
    return ev.evaluate()["panoptic_seg"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pq_sq_rq_equal_panopticapi_exactly(tmp_path, seed, capsys, caplog):
    paths, annotations, predictions = _write_dataset(tmp_path, n_images=8, seed=seed)
    name = unique_dataset_name("t_pq_oracle")
    register_coco_panoptic(name, {}, **paths)
    with caplog.at_level(logging.INFO, logger="mask2former"):
        ours = _evaluate(name, annotations, predictions)
    log = caplog.text
    assert re.search(r"\|\s+\|\s+PQ\s+\|\s+SQ\s+\|\s+RQ\s+\|\s+#categories\s+\|", log)
    assert re.search(r"\|\s+Things\s+\|.*\|\s+3\s+\|", log) and re.search(
        r"\|\s+Stuff\s+\|.*\|\s+2\s+\|", log
    )
    assert re.search(r"\|\s+sky\s+\|", log) and "np.float" not in log
    oracle, oracle_stat = _oracle(annotations, predictions, tmp_path)
    counts = {c: (s.tp, s.fp, s.fn) for c, s in oracle_stat.pq_per_cat.items()}
    assert all(tp and fp and fn for tp, fp, fn in counts.values()), counts  # every case occurs
    for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("pq", "sq", "rq"):
            assert ours[metric.upper() + suffix] - 100 * oracle[group][metric] == 0, (metric, group)
    for c in CATEGORIES:
        for metric in ("pq", "sq", "rq"):
            expected = 100 * oracle["per_class"][c["id"]][metric]
            assert ours[f"{metric.upper()}-{c['name']}"] - expected == 0, (metric, c["name"])
    assert len(DatasetCatalog.get(name)) == 8


def test_listed_ground_truth_segment_absent_from_png_is_a_miss(tmp_path, capsys):
    paths, annotations, predictions = _write_dataset(tmp_path, n_images=2, seed=3)
    name = unique_dataset_name("t_pq_ghost")
    register_coco_panoptic(name, {}, **paths)
    # perfect predictions: the only error is the listed-but-absent "car" of image 101
    perfect = []
    for ann in annotations:
        gt = np.asarray(Image.open(tmp_path / "gt" / ann["file_name"]).convert("RGB")).astype(np.int64)
        gt = gt[..., 0] + 256 * gt[..., 1] + 65536 * gt[..., 2]
        present = set(np.unique(gt).tolist())
        perfect.append((gt, [s for s in ann["segments_info"] if s["id"] in present]))
    for ann, (pred, _) in zip(annotations, perfect):
        Image.fromarray(id2rgb(pred)).save(tmp_path / "pred" / ann["file_name"])
    ours = _evaluate(name, annotations, perfect)
    oracle, stat = _oracle(annotations, perfect, tmp_path)
    assert stat.pq_per_cat[21].fn >= 1
    assert ours["RQ-car"] < 100 and ours["RQ-car"] - 100 * oracle["per_class"][21]["rq"] == 0


def _one_image_dataset(tmp_path):
    """One image: a "cat" (contiguous class 0, the first category) on "grass", void elsewhere."""
    gt = np.zeros((H, W), np.int64)
    gt[:, : W // 2] = 7
    gt[10:20, 10:20] = 9
    (tmp_path / "gt").mkdir()
    Image.fromarray(id2rgb(gt)).save(tmp_path / "gt" / "a.png")
    segments = [
        {"id": 7, "category_id": 5, "iscrowd": 0, "area": int((gt == 7).sum())},
        {"id": 9, "category_id": 3, "iscrowd": 0, "area": 100},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
        "categories": CATEGORIES,
    }
    (tmp_path / "gt.json").write_text(json.dumps(data))
    name = unique_dataset_name("t_pq_one")
    register_coco_panoptic(
        name,
        {},
        image_root=str(tmp_path),
        panoptic_root=str(tmp_path / "gt"),
        panoptic_json=str(tmp_path / "gt.json"),
    )
    return name, gt


def test_ids_without_segments_info_are_shifted_so_class_0_instance_0_is_not_void(tmp_path):
    name, gt = _one_image_dataset(tmp_path)
    div = MetadataCatalog.get(name).label_divisor
    pan = torch.full((H, W), -1, dtype=torch.int32)  # -1: void
    pan[:, : W // 2] = 1 * div  # grass (contiguous 1), instance 0
    pan[10:20, 10:20] = 0 * div + 0  # cat (contiguous 0), instance 0: id 0 before the shift
    ev = COCOPanopticEvaluator(name, str(tmp_path / "out"))
    ev.reset()
    ev.process([{"image_id": 1}], [{"panoptic_seg": (pan, None)}])
    res = ev.evaluate()["panoptic_seg"]
    assert res["PQ"] == 100 and res["PQ-cat"] == 100 and res["PQ-grass"] == 100
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"][0]
    assert sorted(s["id"] for s in written["segments_info"]) == [1, div + 1]


@pytest.mark.parametrize(
    "segments, message",
    [
        ([{"id": 7, "category_id": 1}, {"id": 9, "category_id": 17}], "unknown category_id 17"),
        ([{"id": 7, "category_id": 1}, {"id": 9, "category_id": 0}, {"id": 4, "category_id": 0}], r"\[4\]"),
        ([{"id": 7, "category_id": 1}], "segment id 9 missing"),
    ],
)
def test_invalid_predictions_are_refused_with_the_image_id(tmp_path, segments, message):
    name, gt = _one_image_dataset(tmp_path)
    ev = COCOPanopticEvaluator(name)
    ev.reset()
    with pytest.raises(ValueError, match=message) as err:
        ev.process([{"image_id": 1}], [{"panoptic_seg": (torch.from_numpy(gt), segments)}])
    assert "image 1" in str(err.value)


def test_an_image_processed_twice_is_refused(tmp_path):
    name, gt = _one_image_dataset(tmp_path)
    segments = [{"id": 7, "category_id": 1}, {"id": 9, "category_id": 0}]
    ev = COCOPanopticEvaluator(name)
    ev.reset()
    ev.process([{"image_id": 1}], [{"panoptic_seg": (torch.from_numpy(gt), segments)}])
    with pytest.raises(ValueError, match="twice"):
        ev.process([{"image_id": 1}], [{"panoptic_seg": (torch.from_numpy(gt), segments)}])
