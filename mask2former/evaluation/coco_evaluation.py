"""COCO instance-segmentation AP, scored by pycocotools' COCOeval ("segm")."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.detection_utils import segmentation_to_mask
from ..utils.dist import gather_on_main
from .evaluator import DatasetEvaluator
from .prediction_files import write_predictions_json

logger = logging.getLogger(__name__)


def instances_to_coco_json(instances, image_id, contiguous_to_dataset: dict[int, int]) -> list[dict]:
    """Predicted Instances (pred_masks bool [N, H, W], scores [N], pred_classes int64 [N]) ->
    COCO result dicts with RLE segmentation and the mask's tight box."""
    n = len(instances)
    if n == 0:
        return []
    masks = instances.pred_masks.cpu().numpy().astype(np.uint8)
    scores = instances.scores.cpu().tolist()
    classes = instances.pred_classes.cpu().tolist()
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    boxes = mask_util.toBbox(rles).tolist()
    out = []
    for rle, box, score, cls in zip(rles, boxes, scores, classes):
        if int(cls) not in contiguous_to_dataset:
            raise KeyError(f"Predicted class {cls} is not a thing class of this dataset")
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(
            {
                "image_id": image_id,
                "category_id": contiguous_to_dataset[int(cls)],
                "segmentation": rle,
                "bbox": box,
                "score": float(score),
            }
        )
    return out


def dataset_dicts_to_coco(dataset_name: str) -> dict:
    """A COCO ground-truth dict built from the registered dataset (for datasets without a JSON)."""
    meta = MetadataCatalog.get(dataset_name)
    id_map = meta.thing_dataset_id_to_contiguous_id
    contig_to_ds = {v: k for k, v in id_map.items()}
    images, annotations = [], []
    for d in DatasetCatalog.get(dataset_name):
        h, w = d["height"], d["width"]
        images.append({"id": d["image_id"], "height": h, "width": w, "file_name": d["file_name"]})
        for a in d.get("annotations", []):
            m = segmentation_to_mask(a["segmentation"], h, w, d["file_name"])
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": d["image_id"],
                    "category_id": contig_to_ds[a["category_id"]],
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "iscrowd": int(a.get("iscrowd", 0)),
                }
            )
    categories = [
        {"id": contig_to_ds[i], "name": n} for i, n in enumerate(meta.thing_classes) if i in contig_to_ds
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


class COCOEvaluator(DatasetEvaluator):
    """Mask AP of outputs[i]["instances"] with COCOeval "segm" against the dataset's COCO JSON
    (metadata `json_file`), or against a COCO dict built from the dataset dicts when there is
    none. Returns {"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...}} in
    percent. With `output_dir`, writes `coco_instances_results.json`."""

    METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def __init__(self, dataset_name: str, output_dir: str | None = None, max_dets_per_image: int = 100):
        self.dataset_name = dataset_name
        self.meta = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self.max_dets = max_dets_per_image
        id_map = self.meta.thing_dataset_id_to_contiguous_id
        self._contig_to_ds = {v: k for k, v in id_map.items()}
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                self._predictions.extend(
                    instances_to_coco_json(out["instances"], inp["image_id"], self._contig_to_ds)
                )

    def _coco_gt(self) -> COCO:
        json_file = self.meta.get("json_file")
        with contextlib.redirect_stdout(io.StringIO()):
            if json_file:
                return COCO(json_file)
            gt = COCO()
            gt.dataset = dataset_dicts_to_coco(self.dataset_name)
            gt.createIndex()
            return gt

    def evaluate(self) -> dict:
        preds = gather_on_main(self._predictions)
        if preds is None:
            return {}
        write_predictions_json(self.output_dir, "coco_instances_results.json", preds)
        coco_gt = self._coco_gt()
        names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
        if not preds:
            logger.warning("No instance predictions; every AP is 0")
            res = dict.fromkeys(self.METRICS, 0.0)
            return OrderedDict(segm=res)
        stats, per_class = evaluate_coco_segm(coco_gt, preds, self.max_dets)
        res = {m: 100 * float(s) for m, s in zip(self.METRICS, stats[:6])}
        for cat, ap in per_class.items():
            res[f"AP-{names[cat]}"] = 100 * ap
        logger.info("Instance segmentation: %s", {k: round(v, 3) for k, v in res.items() if "-" not in k})
        return OrderedDict(segm=res)


def evaluate_coco_segm(
    coco_gt: COCO, predictions: list[dict], max_dets: int = 100
) -> tuple[np.ndarray, dict]:
    """Run COCOeval("segm"); returns (its 12 summary stats, {category id: AP})."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    logger.info("COCOeval segm:\n%s", buf.getvalue())
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[cat] = float(p.mean()) if p.size else float("nan")
    return ev.stats, per_class


__all__ = ["COCOEvaluator", "evaluate_coco_segm", "instances_to_coco_json"]
