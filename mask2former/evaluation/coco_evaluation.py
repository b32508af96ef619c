"""COCO instance-segmentation AP, scored by pycocotools' COCOeval ("segm")."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

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
    images: list[dict] = []
    annotations: list[dict] = []
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
            if "instances" not in out:
                raise KeyError(
                    f"COCOEvaluator({self.dataset_name!r}) needs 'instances' in the model's outputs, which "
                    f"has {sorted(out)}: set MODEL.MASK_FORMER.TEST.INSTANCE_ON True"
                )
            self._predictions.extend(
                instances_to_coco_json(out["instances"], inp["image_id"], self._contig_to_ds)
            )

    def _coco_gt(self) -> COCO:
        json_file = self.meta.get("json_file")
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
        if json_file:
            with open(json_file, encoding="utf-8") as f:
                gt.dataset = normalize_coco_annotations(json.load(f), json_file)
        else:
            gt.dataset = dataset_dicts_to_coco(self.dataset_name)
        with contextlib.redirect_stdout(io.StringIO()):
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
        stats, per_class = evaluate_coco_segm(
            coco_gt, preds, self.max_dets, sorted(self._contig_to_ds.values())
        )
        # COCOeval gives -1 where a metric is undefined (no ground truth of that size): NaN, as Detectron2
        res = {m: 100 * float(s) if s >= 0 else float("nan") for m, s in zip(self.METRICS, stats[:6])}
        for cat, ap in per_class.items():
            res[f"AP-{names[cat]}"] = 100 * ap
        logger.info(
            "Evaluation results for segm:\n%s",
            tabulate([[res[m] for m in self.METRICS]], headers=self.METRICS, tablefmt="pipe", floatfmt=".3f"),
        )
        logger.info("Per-category segm AP:\n%s", per_category_ap_table(res, [names[c] for c in per_class]))
        return OrderedDict(segm=res)


def per_category_ap_table(res: dict, class_names: list[str], columns: int = 3) -> str:
    """Detectron2's per-category AP table: (category, AP) pairs, `columns` pairs per row."""
    cells = [cell for name in class_names for cell in (name, res[f"AP-{name}"])]
    rows = [cells[i : i + 2 * columns] for i in range(0, len(cells), 2 * columns)]
    return tabulate(
        rows, headers=["category", "AP"] * columns, tablefmt="pipe", floatfmt=".3f", numalign="left"
    )


def normalize_coco_annotations(data: dict, json_file: str) -> dict:
    """`data` (a COCO instances JSON) ready for pycocotools: annotation ids renumbered 1..N when
    any is 0 (pycocotools stores the matched ground-truth id and tests it for truth, so a match
    to id 0 counts as a miss), repeated (its index keeps one of them) or missing; `iscrowd`
    filled with 0 and `area` with the mask area where absent. One log line says what changed."""
    anns = data.get("annotations", [])
    ids = [a.get("id") for a in anns]
    problems = []
    if any(i is None for i in ids):
        problems.append(f"{sum(i is None for i in ids)} missing")
    if 0 in ids:
        problems.append("id 0 present")
    repeated = len(ids) - len(set(ids))
    if repeated:
        problems.append(f"{repeated} repeated")
    no_crowd = sum("iscrowd" not in a for a in anns)
    no_area = sum("area" not in a for a in anns)
    if not (problems or no_crowd or no_area):
        return data
    anns = [dict(a) for a in anns]
    heights = {img["id"]: (img["height"], img["width"]) for img in data.get("images", [])}
    for k, a in enumerate(anns):
        if problems:
            a["id"] = k + 1
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            h, w = heights[a["image_id"]]
            a["area"] = float(mask_util.area(mask_util.merge(_to_rles(a["segmentation"], h, w))))
    changes = [f"annotation ids renumbered 1..{len(anns)} ({', '.join(problems)})"] if problems else []
    if no_crowd:
        changes.append(f"iscrowd set to 0 on {no_crowd} annotations without it")
    if no_area:
        changes.append(f"area computed from the mask for {no_area} annotations without it")
    logger.warning("Ground truth %s, for pycocotools: %s", json_file, "; ".join(changes))
    return {**data, "annotations": anns}


def _to_rles(segmentation, h: int, w: int) -> list:
    if isinstance(segmentation, list):
        return mask_util.frPyObjects(segmentation, h, w)
    if isinstance(segmentation["counts"], list):
        return [mask_util.frPyObjects(segmentation, h, w)]
    return [segmentation]


def evaluate_coco_segm(
    coco_gt: COCO, predictions: list[dict], max_dets: int = 100, category_ids: list[int] | None = None
) -> tuple[np.ndarray, dict]:
    """Run COCOeval("segm") over `category_ids` (all of the ground truth's when None); returns
    (its 12 summary stats, {category id: AP})."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.maxDets = [1, 10, max_dets]
        if category_ids is not None:
            ev.params.catIds = list(category_ids)
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


__all__ = ["COCOEvaluator", "evaluate_coco_segm", "instances_to_coco_json", "normalize_coco_annotations"]
