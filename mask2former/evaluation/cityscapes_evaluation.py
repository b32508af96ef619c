"""Cityscapes instance AP and semantic IoU, scored by the official cityscapesscripts.

Predictions are written in the official submission format (label-id PNGs; per-image text files
listing instance mask PNGs) to a folder and evaluated against the `gtFine` files named by the
dataset metadata `gt_dir` (`*_gtFine_labelIds.png`, `*_gtFine_instanceIds.png`); every image
under `gt_dir` must have been processed. cityscapesscripts 2.3.0 is run on numpy 2 through two
rebound names of its evaluation modules (`_cs_module`), with a private copy of its global `args`,
in the prediction folder (it writes `matches.json` to the working directory), and its exits
(`printError` -> `sys.exit`) raised as RuntimeError.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import importlib
import io
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image

from mask2former.utils.dist import all_gather, is_main_process

from ..data.catalog import MetadataCatalog
from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)


class _NumpyWithIn1d:
    """numpy plus `in1d` (removed in numpy 2.4, still called by cityscapesscripts 2.3.0):
    `in1d(a, b, invert)` is `isin(a, b, invert).ravel()` by numpy's own definition."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
        return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


def _write_dict_to_json(d: dict, file_name: str) -> None:
    """cityscapesscripts' `writeDict2JSON`, also for numpy scalars (numpy 2 returns them from
    `count_nonzero`, which the original cannot serialize)."""

    def default(o):
        return o.item() if isinstance(o, np.generic) else o.__dict__

    with open(file_name, "w") as f:
        f.write(json.dumps(d, default=default, sort_keys=True, indent=4))


def _cs_module(name: str):
    """An official cityscapesscripts evaluation module, made to run on numpy 2 by rebinding two
    of its module-level names (numpy itself is left as it is): `np` gains `in1d` where numpy no
    longer has it, and `writeDict2JSON` accepts numpy scalars."""
    # Any, as a static import of the untyped library would be: its module-level names are rebound
    module: Any = importlib.import_module(f"cityscapesscripts.evaluation.{name}")
    if not hasattr(np, "in1d") and not isinstance(module.np, _NumpyWithIn1d):
        module.np = _NumpyWithIn1d()
    if hasattr(module, "writeDict2JSON"):
        module.writeDict2JSON = _write_dict_to_json
    return module


def _cs_args(module, **overrides):
    """A private copy of the module's global `args` (its defaults) with `overrides`, so that one
    evaluation leaves nothing behind for the next (e.g. the cached walk of a prediction folder)."""
    args = copy.copy(module.args)
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@contextlib.contextmanager
def _working_dir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _run_cs(fn, *args, workdir: str):
    """Call a cityscapesscripts function in `workdir` (it writes `matches.json` to the working
    directory); its errors (printed, then `sys.exit`) become a RuntimeError with the message."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), _working_dir(workdir):
            return fn(*args)
    except SystemExit as e:
        msg = out.getvalue().strip().splitlines()
        raise RuntimeError(f"cityscapesscripts failed: {msg[-1] if msg else e}") from None


class _CityscapesEvaluator(DatasetEvaluator):
    def __init__(self, dataset_name: str, output_dir: str | None = None):
        self.meta = MetadataCatalog.get(dataset_name)
        self.output_dir = output_dir
        self._tmp = self._shared_folder()

    def reset(self) -> None:
        self._tmp.cleanup()
        self._tmp = self._shared_folder()

    def _shared_folder(self) -> tempfile.TemporaryDirectory[str]:
        """A new temporary folder for the predictions; sets `_dir` to rank 0's, into which every
        process writes (one machine or a shared file system)."""
        tmp = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._dir = all_gather(tmp.name)[0]
        return tmp

    def _gt_and_predictions(self, suffix: str, pred_ext: str) -> tuple[list[str], list[str]]:
        """Every `*_gtFine_<suffix>.png` under `gt_dir` (absolute paths) and the prediction file
        written for its image; a ground truth without a prediction is an error."""
        gt_dir = os.path.abspath(self.meta.gt_dir)
        gts = sorted(glob.glob(os.path.join(gt_dir, "*", f"*_gtFine_{suffix}.png")))
        if not gts:
            raise FileNotFoundError(f"No *_gtFine_{suffix}.png under {gt_dir}")
        preds = {}
        for name in os.listdir(self._dir):
            if name.endswith(pred_ext):
                preds["_".join(name.split("_")[:3])] = os.path.join(self._dir, name)
        missing = [g for g in gts if _cs_stem(g) not in preds]
        if missing:
            raise RuntimeError(
                f"Cityscapes evaluation: no prediction for {len(missing)} of {len(gts)} ground-truth "
                f"images under {gt_dir} (e.g. {os.path.basename(missing[0])}); every image of the "
                "split must be processed"
            )
        return gts, [preds[_cs_stem(g)] for g in gts]

    def _run_official(
        self, script: str, gt_suffix: str, pred_ext: str, **extra_args
    ) -> tuple[dict, int] | None:
        """Run cityscapesscripts' `script` on the predictions written by `process` against every
        `*_gtFine_<gt_suffix>.png`: (its result, number of images) on the main process, None on
        the others. Cleans up the prediction folder."""
        all_gather(None)  # wait for every process to finish writing
        if not is_main_process():
            return None
        cs_eval = _cs_module(script)
        args = _cs_args(
            cs_eval,
            predictionPath=os.path.abspath(self._dir),
            predictionWalk=None,
            JSONOutput=False,
            colorized=False,
            quiet=True,
            **extra_args,
        )
        gts, preds = self._gt_and_predictions(gt_suffix, pred_ext)
        result = _run_cs(cs_eval.evaluateImgLists, preds, gts, args, workdir=self._dir)
        self._tmp.cleanup()
        return result, len(gts)


def _cs_stem(path: str) -> str:
    """<city>_<sequence>_<frame> of a Cityscapes file name."""
    return "_".join(os.path.basename(path).split("_")[:3])


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
        run = self._run_official("evalPixelLevelSemanticLabeling", "labelIds", "_pred.png", bold="", nocol="")
        if run is None:
            return {}
        r, num_images = run
        res = {
            "IoU": 100.0 * float(r["averageScoreClasses"]),
            "iIoU": 100.0 * float(r["averageScoreInstClasses"]),
            "IoU_sup": 100.0 * float(r["averageScoreCategories"]),
            "iIoU_sup": 100.0 * float(r["averageScoreInstCategories"]),
        }
        logger.info("Cityscapes semantic segmentation on %d images: %s", num_images, res)
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
        run = self._run_official(
            "evalInstanceLevelSemanticLabeling",
            "instanceIds",
            "_pred.txt",
            # computed from this split's files (the default is a cache inside the package)
            gtInstancesFile=os.path.join(os.path.abspath(self._dir), "gtInstances.json"),
        )
        if run is None:
            return {}
        r, num_images = run
        r = r["averages"]
        res = {"AP": 100.0 * float(r["allAp"]), "AP50": 100.0 * float(r["allAp50%"])}
        logger.info("Cityscapes instance segmentation on %d images: %s", num_images, res)
        return OrderedDict(segm=res)


__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]
