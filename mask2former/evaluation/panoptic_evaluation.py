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
from collections import Counter, OrderedDict

import numpy as np
from PIL import Image
from tabulate import tabulate

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
    gt: np.ndarray,
    gt_segments: list[dict],
    pred: np.ndarray,
    pred_segments: list[dict],
    source: str = "",
    stat: PQStat | None = None,
    categories: dict[int, bool] | None = None,
) -> PQStat:
    """PQ counts of one image, added to `stat` (a new PQStat when None) and returned. Counts are
    added in panopticapi's order, so summed IoUs equal its float sums exactly.

    Args:
        gt, pred: segment ids int [H, W]; 0 is void in `gt` (and "no segment" in `pred`).
        gt_segments: [{"id", "category_id", "iscrowd", "area" (optional)}]. As in panopticapi, a
            segment's "area" from the JSON is used when given (so a listed segment absent from
            the PNG is a miss); the PNG's pixel count otherwise.
        pred_segments: [{"id", "category_id"}]; a listed segment absent from `pred`, an id in
            `pred` it does not list, or (with `categories`) an unknown category raises ValueError
            naming `source`, as panopticapi refuses them.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"{source}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
    stat = PQStat() if stat is None else stat
    gt_segms = _gt_segments_with_area(gt, gt_segments, source)
    pred_segms = _pred_segments_with_area(pred, pred_segments, source, categories)
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
    """id -> segment with its area: the JSON's "area" when it has one (as panopticapi), else
    the PNG's pixel count. A PNG id that the JSON does not list raises DatasetFormatError."""
    segms = {int(s["id"]): dict(s) for s in gt_segments}
    ids, cnt = np.unique(gt, return_counts=True)
    png_area = dict(zip(ids.tolist(), cnt.tolist()))
    for i in png_area:
        if i != VOID and i not in segms:
            raise DatasetFormatError(
                f"Ground-truth PNG {source} has segment id {i} that its JSON does not list"
            )
    for i, s in segms.items():
        if s.get("area") is None:
            s["area"] = png_area.get(i, 0)
    return segms


def _pred_segments_with_area(
    pred: np.ndarray, pred_segments: list[dict], source: str, categories: dict[int, bool] | None
) -> dict[int, dict]:
    """id -> segment with its pixel count; ValueError naming `source` for an id in `pred` that
    `pred_segments` does not list, a listed id absent from `pred`, a listed id 0 (void), or a
    category outside `categories` (when given)."""
    segms = {int(s["id"]): dict(s) for s in pred_segments}
    if VOID in segms:
        raise ValueError(f"Prediction for {source} lists segment id 0, which panoptic PNGs reserve for void")
    ids, cnt = np.unique(pred, return_counts=True)
    for i, c in zip(ids.tolist(), cnt.tolist()):
        if i == VOID:
            continue
        if i not in segms:
            raise ValueError(f"Prediction for {source} has segment id {i} missing from its segments_info")
        segms[i]["area"] = c
        if categories is not None and segms[i]["category_id"] not in categories:
            raise ValueError(
                f"Prediction for {source}: segment {i} has unknown category_id {segms[i]['category_id']}"
            )
    absent = sorted(i for i, s in segms.items() if "area" not in s)
    if absent:
        raise ValueError(f"Prediction for {source} lists segment ids {absent} that its PNG does not contain")
    return segms


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
            stat.add(gs["category_id"], TP, 1)
            stat.add(gs["category_id"], IOU_SUM, iou)
            gt_matched.add(g)
            pred_matched.add(p)
    return gt_matched, pred_matched


class COCOPanopticEvaluator(DatasetEvaluator):
    """PQ of outputs[i]["panoptic_seg"] = (segment ids int [H, W], segments_info list of
    {"id", "isthing", "category_id" (contiguous)}) against the dataset's panoptic PNG + JSON
    (metadata `panoptic_json`, `panoptic_root`), with panopticapi's results on every input.

    When segments_info is None, ids are category * label_divisor + instance with -1 for void;
    they are shifted by one, as Detectron2 does, so that the first instance of category 0 is
    not void. An image given to `process` twice is refused. With `output_dir`, also writes the
    predictions as panoptic PNGs + `predictions.json` in COCO panoptic format (dataset category
    ids). Returns {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ_st", ...,
    "PQ-<class>", "SQ-<class>", "RQ-<class>"}} in percent."""

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        self.meta = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self._gt: dict | None = None
        self.reset()

    def reset(self) -> None:
        self._stat = PQStat()
        self._pred_json: list[dict] = []
        self._image_ids: list = []

    def _ground_truth(self) -> dict:
        """image id -> (panoptic PNG path, segments_info with contiguous ids), read on first use."""
        if self._gt is None:
            self._gt = self._load_gt()
        return self._gt

    def _load_gt(self) -> dict:
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
        names = self.meta.get("stuff_classes") or [c["name"] for c in data["categories"]]
        self._class_names = {v: names[v] if v < len(names) else str(k) for k, v in cat_map.items()}
        gt = {}
        for ann in data["annotations"]:
            segs = []
            for s in ann["segments_info"]:
                if s["category_id"] not in cat_map:
                    raise DatasetFormatError(
                        f"{path}: category_id {s['category_id']} of {ann['file_name']} is unknown"
                    )
                segs.append(
                    {
                        "id": s["id"],
                        "category_id": cat_map[s["category_id"]],
                        "iscrowd": s.get("iscrowd", 0),
                        "area": s.get("area"),
                    }
                )
            gt[ann["image_id"]] = (os.path.join(self.meta.panoptic_root, ann["file_name"]), segs)
        return gt

    def _segments_from_ids(self, pan: np.ndarray, image_id) -> tuple[np.ndarray, list[dict]]:
        """(ids shifted by one with void 0, segments_info) of `pan` = category * label_divisor +
        instance, -1 for void (Detectron2's convention when segments_info is None)."""
        if (pan < -1).any():
            raise ValueError(
                f"Panoptic prediction for image {image_id!r} has ids below -1 (only -1 may mark void)"
            )
        div = self.meta.get("label_divisor", 1000)
        segments = [
            {
                "id": int(i) + 1,
                "category_id": int(i) // div,
                "isthing": self._categories.get(int(i) // div, False),
            }
            for i in np.unique(pan)
            if i != -1
        ]
        return pan + 1, segments

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        gt_by_image = self._ground_truth()
        for inp, out in zip(inputs, outputs):
            pan, segments = out["panoptic_seg"]
            pan = pan.cpu().numpy().astype(np.int64)
            image_id = inp["image_id"]
            if image_id in self._image_ids:
                raise ValueError(
                    f"Image id {image_id!r} ({inp.get('file_name')}) was given to process() twice"
                )
            if image_id not in gt_by_image:
                raise KeyError(
                    f"Image id {image_id!r} ({inp.get('file_name')}) is not in {self.meta.panoptic_json}"
                )
            self._image_ids.append(image_id)
            if segments is None:
                pred, segments = self._segments_from_ids(pan, image_id)
            else:
                if (pan < 0).any():
                    raise ValueError(f"Panoptic prediction for image {image_id!r} has negative segment ids")
                pred = pan
            gt_file, gt_segs = gt_by_image[image_id]
            gt = read_panoptic_png(gt_file)
            source = f"image {image_id!r} ({gt_file})"
            pq_single_image(gt, gt_segs, pred, segments, source, self._stat, self._categories)
            if self.output_dir:
                self._write(self.output_dir, pred, segments, image_id, os.path.basename(gt_file))

    def _write(
        self, output_dir: str, pred: np.ndarray, segments: list[dict], image_id, png_name: str
    ) -> None:
        folder = os.path.join(output_dir, "panoptic_predictions")
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
        image_ids = gather_on_main(self._image_ids)
        preds = gather_on_main(self._pred_json)
        if image_ids is None or preds is None:  # not the main process
            return {}
        gt_by_image = self._ground_truth()
        repeated = sorted((i for i, n in Counter(image_ids).items() if n > 1), key=str)
        if repeated:
            raise ValueError(f"Images {repeated[:10]} were evaluated by more than one process")
        if len(image_ids) < len(gt_by_image):
            logger.warning(
                "Panoptic evaluation covers %d of the %d images of %s",
                len(image_ids),
                len(gt_by_image),
                self.meta.panoptic_json,
            )
        write_predictions_json(self.output_dir, "predictions.json", {"annotations": preds})
        res = OrderedDict()
        summary = {}
        for key, name, isthing in (("", "All", None), ("_th", "Things", True), ("_st", "Stuff", False)):
            avg, per_class = stat.pq_average(self._categories, isthing)
            summary[name] = avg
            if isthing is None:
                all_per_class = per_class
            res["PQ" + key] = 100 * avg["pq"]
            res["SQ" + key] = 100 * avg["sq"]
            res["RQ" + key] = 100 * avg["rq"]
        for cat, values in all_per_class.items():
            for metric in ("pq", "sq", "rq"):
                res[f"{metric.upper()}-{self._class_names[cat]}"] = 100 * float(values[metric])
        res = OrderedDict((k, float(v)) for k, v in res.items())
        logger.info("Panoptic evaluation results:\n%s", panoptic_summary_table(summary))
        logger.info(
            "Per-category panoptic results:\n%s",
            per_category_table(res, ("PQ", "SQ", "RQ"), self._class_names),
        )
        return OrderedDict(panoptic_seg=res)


def panoptic_summary_table(summary: dict[str, dict]) -> str:
    """Detectron2's PQ table: rows All / Things / Stuff, columns PQ, SQ, RQ (percent) and the
    number of categories averaged."""
    rows = [
        [name] + [100 * float(summary[name][k]) for k in ("pq", "sq", "rq")] + [summary[name]["n"]]
        for name in ("All", "Things", "Stuff")
    ]
    return tabulate(
        rows,
        headers=["", "PQ", "SQ", "RQ", "#categories"],
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )


def per_category_table(res: dict, metrics: tuple[str, ...], class_names: dict[int, str]) -> str:
    """One row per class with the `<metric>-<class>` values of `res`."""
    rows = [[name] + [res[f"{m}-{name}"] for m in metrics] for name in class_names.values()]
    return tabulate(rows, headers=["category", *metrics], tablefmt="pipe", floatfmt=".3f", numalign="left")


__all__ = ["COCOPanopticEvaluator", "PQStat", "pq_single_image"]
