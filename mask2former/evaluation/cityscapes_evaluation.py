"""Cityscapes instance AP and semantic IoU, scored by the official cityscapesscripts.

Predictions are written in the official submission format (label-id PNGs; per-image text files
listing instance mask PNGs) to a folder and evaluated against the `gtFine` files named by the
dataset metadata `gt_dir` (`*_gtFine_labelIds.png`, `*_gtFine_instanceIds.png`).
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from collections import OrderedDict

import numpy as np
from PIL import Image

from ..data.catalog import MetadataCatalog
from .evaluator import DatasetEvaluator, all_gather, is_main_process

logger = logging.getLogger(__name__)


class _CityscapesEvaluator(DatasetEvaluator):
    def __init__(self, dataset_name: str, output_dir: str | None = None):
        self.meta = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.reset()

    def reset(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        self._tmp = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        # every process writes into rank 0's folder (one machine or a shared file system)
        self._dir = all_gather(self._tmp.name)[0]

    def _gt_files(self, suffix: str) -> list[str]:
        files = sorted(glob.glob(os.path.join(self.meta.gt_dir, "*", f"*_gtFine_{suffix}.png")))
        if not files:
            raise FileNotFoundError(f"No *_gtFine_{suffix}.png under {self.meta.gt_dir}")
        return files


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """outputs[i]["sem_seg"] [19, H, W] scores -> official IoU / iIoU (classes and categories)."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        from cityscapesscripts.helpers.labels import trainId2label

        lut = np.zeros(256, dtype=np.uint8)
        for train_id, label in trainId2label.items():
            if 0 <= train_id < 255:
                lut[train_id] = label.id
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.uint8)
            name = os.path.basename(inp["file_name"]).replace("_leftImg8bit.png", "_pred.png")
            Image.fromarray(lut[pred]).save(os.path.join(self._dir, name))

    def evaluate(self) -> dict:
        all_gather(None)  # wait for every process to finish writing
        if not is_main_process():
            return {}
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

        cs_eval.args.predictionPath = os.path.abspath(self._dir)
        cs_eval.args.predictionWalk = None
        cs_eval.args.JSONOutput = False
        cs_eval.args.colorized = False
        cs_eval.args.quiet = True
        gts = self._gt_files("labelIds")
        preds = [cs_eval.getPrediction(cs_eval.args, gt) for gt in gts]
        r = cs_eval.evaluateImgLists(preds, gts, cs_eval.args)
        res = {
            "IoU": 100.0 * r["averageScoreClasses"],
            "iIoU": 100.0 * r["averageScoreInstClasses"],
            "IoU_sup": 100.0 * r["averageScoreCategories"],
            "iIoU_sup": 100.0 * r["averageScoreInstCategories"],
        }
        self._tmp.cleanup()
        return OrderedDict(sem_seg=res)


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """outputs[i]["instances"] (pred_masks, scores, pred_classes over the 8 thing classes) ->
    official AP and AP50."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        from cityscapesscripts.helpers.labels import name2label

        names = self.meta.thing_classes
        for inp, out in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            inst = out["instances"]
            masks = inst.pred_masks.cpu().numpy()
            scores = inst.scores.cpu().tolist()
            classes = inst.pred_classes.cpu().tolist()
            with open(os.path.join(self._dir, stem + "_pred.txt"), "w") as f:
                for i, (score, cls) in enumerate(zip(scores, classes)):
                    png = f"{stem}_{i}_{names[cls].replace(' ', '_')}.png"
                    Image.fromarray(masks[i].astype(np.uint8) * 255).save(os.path.join(self._dir, png))
                    f.write(f"{png} {name2label[names[cls]].id} {score}\n")

    def evaluate(self) -> dict:
        all_gather(None)
        if not is_main_process():
            return {}
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval

        cs_eval.args.predictionPath = os.path.abspath(self._dir)
        cs_eval.args.predictionWalk = None
        cs_eval.args.JSONOutput = False
        cs_eval.args.colorized = False
        cs_eval.args.quiet = True
        cs_eval.args.gtInstancesFile = os.path.join(self._dir, "gtInstances.json")
        gts = self._gt_files("instanceIds")
        preds = [cs_eval.getPrediction(gt, cs_eval.args) for gt in gts]
        r = cs_eval.evaluateImgLists(preds, gts, cs_eval.args)["averages"]
        self._tmp.cleanup()
        return OrderedDict(segm={"AP": 100.0 * r["allAp"], "AP50": 100.0 * r["allAp50%"]})


__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]
