"""Semantic segmentation metrics from a confusion matrix: mIoU, fwIoU, mACC, pACC (percent)."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
from tabulate import tabulate

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.detection_utils import read_label_png
from ..utils.dist import all_gather, gather_on_main
from .evaluator import DatasetEvaluator
from .prediction_files import write_predictions_json

logger = logging.getLogger(__name__)


class SemSegEvaluator(DatasetEvaluator):
    """Scores outputs[i]["sem_seg"] ([C, H, W] scores; argmax over C) against the label PNG
    `sem_seg_file_name` of each input (looked up in the dataset when the input lacks it).
    Pixels labelled `ignore_label` are left out. Classes absent from the ground truth do not
    enter the means (as Detectron2)."""

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        num_classes: int | None = None,
        ignore_label: int | None = None,
    ):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        meta = MetadataCatalog.get(dataset_name)
        self.class_names = list(meta.get("stuff_classes") or [])
        self.num_classes = num_classes or len(self.class_names) or meta.get("num_classes")
        if not self.num_classes:
            raise ValueError(f"Metadata of {dataset_name!r} has neither stuff_classes nor num_classes")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.ignore_label = meta.get("ignore_label", 255) if ignore_label is None else ignore_label
        self._gt_files: dict | None = None
        self.reset()

    def reset(self) -> None:
        n = self.num_classes + 1
        self._conf = np.zeros((n, n), dtype=np.int64)  # [pred, gt], last row/col = ignore
        self._predictions: list[dict] = []

    def _gt_file(self, inp: dict) -> str:
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if self._gt_files is None:
            self._gt_files = {
                d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(self.dataset_name)
            }
        return self._gt_files[inp["file_name"]]

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        n = self.num_classes
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int64)  # [H, W]
            gt_file = self._gt_file(inp)
            gt = read_label_png(gt_file)
            if gt.shape != pred.shape:
                raise ValueError(f"Prediction {pred.shape} and label {gt_file} {gt.shape} differ in size")
            gt = gt.copy()
            gt[gt == self.ignore_label] = n
            if gt.max() > n or gt.min() < 0:
                raise ValueError(
                    f"Label {gt_file} has values outside [0, {n}) other than {self.ignore_label}"
                )
            self._conf += np.bincount(
                (n + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=(n + 1) ** 2
            ).reshape(n + 1, n + 1)
            if self.output_dir:
                self._predictions.extend(self._encode_json(pred, inp["file_name"]))

    def _encode_json(self, pred: np.ndarray, file_name: str) -> list[dict]:
        out = []
        for label in np.unique(pred):
            rle = mask_util.encode(np.asfortranarray((pred == label).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            out.append({"file_name": file_name, "category_id": int(label), "segmentation": rle})
        return out

    def evaluate(self) -> dict:
        conf = sum(all_gather(self._conf))
        preds = gather_on_main(self._predictions)
        if preds is None:
            return {}
        write_predictions_json(self.output_dir, "sem_seg_predictions.json", preds)
        res = semantic_metrics(conf, self.class_names)
        summary = ("mIoU", "fwIoU", "mACC", "pACC")
        logger.info(
            "Semantic segmentation results:\n%s",
            tabulate([[res[k] for k in summary]], headers=summary, tablefmt="pipe", floatfmt=".3f"),
        )
        rows = [[name, res[f"IoU-{name}"], res[f"ACC-{name}"]] for name in self.class_names]
        logger.info(
            "Per-category semantic results (nan: class absent from the ground truth):\n%s",
            tabulate(
                rows, headers=["category", "IoU", "ACC"], tablefmt="pipe", floatfmt=".3f", numalign="left"
            ),
        )
        return OrderedDict(sem_seg=res)


def semantic_metrics(conf: np.ndarray, class_names: list[str]) -> dict:
    """conf [(C+1), (C+1)] counts indexed [pred, gt] with the last index for ignored pixels ->
    {"mIoU", "fwIoU", "IoU-<class>", "mACC", "pACC", "ACC-<class>"} in percent."""
    c = len(class_names)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(0).astype(float)
    pos_pred = conf[:-1, :-1].sum(1).astype(float)
    acc = np.full(c, np.nan)
    iou = np.full(c, np.nan)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    weights = pos_gt / max(pos_gt.sum(), 1)
    res: dict = {
        "mIoU": 100 * iou[iou_valid].sum() / max(iou_valid.sum(), 1),
        "fwIoU": 100 * (iou[iou_valid] * weights[iou_valid]).sum(),
    }
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * iou[i]
    res["mACC"] = 100 * acc[acc_valid].sum() / max(acc_valid.sum(), 1)
    res["pACC"] = 100 * tp.sum() / max(pos_gt.sum(), 1)
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * acc[i]
    return {k: float(v) for k, v in res.items()}  # plain floats for logs and metrics.json


__all__ = ["SemSegEvaluator", "semantic_metrics"]
