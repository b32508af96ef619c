"""Panoptic quality (PQ, SQ, RQ), implemented to the panopticapi definition (Kirillov et al.):

- a predicted and a ground-truth segment of the same category match when IoU > 0.5, where the
  union leaves out the prediction's pixels on void (unlabelled, id 0) ground truth;
- crowd ground-truth segments are never matched and never counted as false negatives;
- an unmatched prediction is not a false positive when more than half of it lies on void or
  on a crowd region of its own category;
- per category PQ = sum(IoU of matches) / (TP + FP/2 + FN/2) = SQ * RQ; categories with no TP,
  FP or FN are left out of the means; things and stuff are also averaged separately.

Per-image statistics are additive, so each image is scored in `process` and only the counts
are kept and gathered across processes.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict

import numpy as np
from PIL import Image

from ..data.catalog import MetadataCatalog
from ..data.detection_utils import DatasetFormatError, id2rgb, read_panoptic_png
from ..utils.dist import all_gather, gather_on_main
from .evaluator import DatasetEvaluator
from .prediction_files import write_predictions_json

logger = logging.getLogger(__name__)

OFFSET = 256 * 256 * 256
VOID = 0
IOU_SUM, TP, FP, FN = range(4)  # the fields of a PQStat row


class PQStat:
    """Per-category accumulators: tp, fp, fn and the summed IoU of matches."""

    def __init__(self):
        self.stats: dict[int, np.ndarray] = {}  # category -> [iou sum, tp, fp, fn]

    def add(self, category: int, field: int, value: float) -> None:
        self.stats.setdefault(int(category), np.zeros(4))[field] += value

    def __iadd__(self, other: PQStat) -> PQStat:
        for k, v in other.stats.items():
            self.stats[k] = self.stats.get(k, np.zeros(4)) + v
        return self

    def pq_average(self, categories: dict[int, bool], isthing: bool | None) -> tuple[dict, dict]:
        """Means over `categories` ({category: isthing}, filtered by `isthing` when not None).
        Returns ({"pq", "sq", "rq", "n"}, per-class dict)."""
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cat, thing in categories.items():
            if isthing is not None and thing != isthing:
                continue
            iou, tp, fp, fn = self.stats[cat] if cat in self.stats else np.zeros(4)
            if tp + fp + fn == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[cat] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_single_image(
    gt: np.ndarray, gt_segments: list[dict], pred: np.ndarray, pred_segments: list[dict], source: str = ""
) -> PQStat:
    """PQ counts of one image.

    Args:
        gt, pred: segment ids int [H, W]; 0 is void in `gt` (and "no segment" in `pred`).
        gt_segments: [{"id", "category_id", "iscrowd"}]; pred_segments: [{"id", "category_id"}].
    """
    if gt.shape != pred.shape:
        raise ValueError(f"{source}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
    stat = PQStat()
    gt_segms = _gt_segments_with_area(gt, gt_segments, source)
    pred_segms = _pred_segments_with_area(pred, pred_segments, source)
    joint = gt.astype(np.uint64) * OFFSET + pred.astype(np.uint64)
    ids, cnt = np.unique(joint, return_counts=True)
    inter = {
        (int(i // OFFSET), int(i % OFFSET)): int(c) for i, c in zip(ids, cnt)
    }  # (gt id, pred id) -> pixels
    gt_matched, pred_matched = _match(gt_segms, pred_segms, inter, stat)

    crowd_by_cat = {}
    for g, gs in gt_segms.items():
        if gs.get("iscrowd", 0):
            crowd_by_cat[gs["category_id"]] = g
        elif g not in gt_matched:
            stat.add(gs["category_id"], FN, 1)
    for p, ps in pred_segms.items():
        if p in pred_matched:
            continue
        covered = inter.get((VOID, p), 0)
        if ps["category_id"] in crowd_by_cat:
            covered += inter.get((crowd_by_cat[ps["category_id"]], p), 0)
        if covered / ps["area"] > 0.5:
            continue  # mostly void or crowd: not a false positive
        stat.add(ps["category_id"], FP, 1)
    return stat


def _gt_segments_with_area(gt: np.ndarray, gt_segments: list[dict], source: str) -> dict[int, dict]:
    """id -> segment with its pixel count, for the segments present in `gt`; a PNG id that the
    JSON does not list raises DatasetFormatError."""
    segms = {int(s["id"]): dict(s, area=0) for s in gt_segments}
    ids, cnt = np.unique(gt, return_counts=True)
    for i, c in zip(ids.tolist(), cnt.tolist()):
        if i == VOID:
            continue
        if i not in segms:
            raise DatasetFormatError(
                f"Ground-truth PNG {source} has segment id {i} that its JSON does not list"
            )
        segms[i]["area"] = c
    return {k: v for k, v in segms.items() if v["area"] > 0}


def _pred_segments_with_area(pred: np.ndarray, pred_segments: list[dict], source: str) -> dict[int, dict]:
    """id -> segment with its pixel count, for the non-void segments present in `pred`; an id
    missing from `pred_segments` raises ValueError."""
    segms = {int(s["id"]): dict(s, area=0) for s in pred_segments}
    ids, cnt = np.unique(pred, return_counts=True)
    for i, c in zip(ids.tolist(), cnt.tolist()):
        if i not in segms:
            if i == VOID:
                continue
            raise ValueError(f"Prediction for {source} has segment id {i} missing from its segments_info")
        segms[i]["area"] = c
    return {k: v for k, v in segms.items() if v["area"] > 0 and k != VOID}


def _match(gt_segms: dict, pred_segms: dict, inter: dict, stat: PQStat) -> tuple[set, set]:
    """Count the true positives (same category, IoU > 0.5, void pixels left out of the union) in
    `stat`; returns the matched (gt ids, pred ids)."""
    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_segms or p not in pred_segms:
            continue
        gs, ps = gt_segms[g], pred_segms[p]
        if gs.get("iscrowd", 0) or gs["category_id"] != ps["category_id"]:
            continue
        union = ps["area"] + gs["area"] - n - inter.get((VOID, p), 0)
        iou = n / union
        if iou > 0.5:
            stat.add(gs["category_id"], IOU_SUM, iou)
            stat.add(gs["category_id"], TP, 1)
            gt_matched.add(g)
            pred_matched.add(p)
    return gt_matched, pred_matched


class COCOPanopticEvaluator(DatasetEvaluator):
    """PQ of outputs[i]["panoptic_seg"] = (segment ids int [H, W], segments_info list of
    {"id", "isthing", "category_id" (contiguous)}) against the dataset's panoptic PNG + JSON
    (metadata `panoptic_json`, `panoptic_root`). With `output_dir`, also writes the predictions
    as panoptic PNGs + `predictions.json` in COCO panoptic format (dataset category ids).
    Returns {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ_st", ...}} in percent."""

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        self.meta = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self._gt: dict | None = None
        self.reset()

    def reset(self) -> None:
        self._stat = PQStat()
        self._pred_json: list[dict] = []

    def _load_gt(self) -> None:
        path = self.meta.panoptic_json
        with open(path) as f:
            data = json.load(f)
        if "stuff_dataset_id_to_contiguous_id" in self.meta:
            cat_map = self.meta.stuff_dataset_id_to_contiguous_id
            thing_ids = set(self.meta.thing_dataset_id_to_contiguous_id.values())
        else:
            cat_map = {c["id"]: i for i, c in enumerate(data["categories"])}
            thing_ids = {cat_map[c["id"]] for c in data["categories"] if c.get("isthing", 1)}
        self._contig_to_dataset = {v: k for k, v in cat_map.items()}
        self._categories = {v: v in thing_ids for v in cat_map.values()}
        self._gt = {}
        for ann in data["annotations"]:
            segs = []
            for s in ann["segments_info"]:
                if s["category_id"] not in cat_map:
                    raise DatasetFormatError(
                        f"{path}: category_id {s['category_id']} of {ann['file_name']} is unknown"
                    )
                segs.append(
                    {"id": s["id"], "category_id": cat_map[s["category_id"]], "iscrowd": s.get("iscrowd", 0)}
                )
            self._gt[ann["image_id"]] = (os.path.join(self.meta.panoptic_root, ann["file_name"]), segs)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        if self._gt is None:
            self._load_gt()
        for inp, out in zip(inputs, outputs):
            pan, segments = out["panoptic_seg"]
            pan = pan.cpu().numpy().astype(np.int64)
            if segments is None:  # ids encode category * label_divisor + instance
                div = self.meta.get("label_divisor", 1000)
                segments = [
                    {
                        "id": int(i),
                        "category_id": int(i) // div,
                        "isthing": self._categories.get(int(i) // div, False),
                    }
                    for i in np.unique(pan)
                    if i >= 0 and int(i) // div in self._categories
                ]
            image_id = inp["image_id"]
            if image_id not in self._gt:
                raise KeyError(
                    f"Image id {image_id!r} ({inp.get('file_name')}) is not in {self.meta.panoptic_json}"
                )
            gt_file, gt_segs = self._gt[image_id]
            gt = read_panoptic_png(gt_file)
            pred = np.where(pan < 0, VOID, pan)
            self._stat += pq_single_image(gt, gt_segs, pred, segments, gt_file)
            if self.output_dir:
                self._write(pred, segments, image_id, os.path.basename(gt_file))

    def _write(self, pred: np.ndarray, segments: list[dict], image_id, png_name: str) -> None:
        folder = os.path.join(self.output_dir, "panoptic_predictions")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(id2rgb(pred)).save(os.path.join(folder, png_name))
        segs = [
            {
                "id": int(s["id"]),
                "category_id": self._contig_to_dataset[int(s["category_id"])],
                "isthing": bool(s.get("isthing", False)),
            }
            for s in segments
        ]
        self._pred_json.append({"image_id": image_id, "file_name": png_name, "segments_info": segs})

    def evaluate(self) -> dict:
        stat = PQStat()
        for s in all_gather(self._stat):
            stat += s
        preds = gather_on_main(self._pred_json)
        if preds is None:
            return {}
        if self._gt is None:
            self._load_gt()
        write_predictions_json(self.output_dir, "predictions.json", {"annotations": preds})
        res = OrderedDict()
        for key, isthing in (("", None), ("_th", True), ("_st", False)):
            avg, _ = stat.pq_average(self._categories, isthing)
            res["PQ" + key] = 100 * avg["pq"]
            res["SQ" + key] = 100 * avg["sq"]
            res["RQ" + key] = 100 * avg["rq"]
        logger.info("Panoptic evaluation: %s", dict(res))
        return OrderedDict(panoptic_seg=res)


__all__ = ["COCOPanopticEvaluator", "PQStat", "pq_single_image"]
