"""Evaluators on hand-made predictions with hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mask2former.data import (
    DatasetCatalog,
    MetadataCatalog,
    register_coco_instances,
    register_coco_panoptic,
    register_sem_seg,
)
from mask2former.data.detection_utils import id2rgb
from mask2former.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator, pq_single_image
from mask2former.structures import Boxes, Instances
from mask2former.utils.testing import IMAGE_H as H
from mask2former.utils.testing import IMAGE_W as W
from mask2former.utils.testing import make_coco_instances, make_coco_panoptic, unique_dataset_name

# ---------------------------------------------------------------- PQ


def _seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def test_pq_perfect():
    gt = np.zeros((10, 10), np.int64)
    gt[:5] = 1
    gt[5:] = 2
    st = pq_single_image(gt, [_seg(1, 0), _seg(2, 1)], gt.copy(), [_seg(1, 0), _seg(2, 1)])
    avg, _ = st.pq_average({0: True, 1: False}, None)
    assert avg["pq"] == pytest.approx(1.0) and avg["n"] == 2


def test_pq_partial_hand_computed():
    """Category 0 (thing): GT 1 matched at IoU 0.6, GT 2 missed -> PQ 0.4, SQ 0.6, RQ 2/3.
    Category 1 (stuff): matched at IoU 46/66 -> PQ = SQ = 46/66, RQ 1."""
    gt = np.full((10, 10), 4, np.int64)  # stuff of category 1 (66 px in the end)
    gt[0:6, 0:5] = 1  # 30 px
    gt[8:10, 8:10] = 2  # 4 px, missed
    pred = np.full_like(gt, 7)
    pred[0:10, 0:5] = 5  # 30 px on GT 1 + 20 px on the stuff -> IoU 30 / 50 = 0.6
    pred[8:10, 8:10] = 0  # nothing predicted there
    st = pq_single_image(gt, [_seg(1, 0), _seg(2, 0), _seg(4, 1)], pred, [_seg(5, 0), _seg(7, 1)])
    iou, tp, fp, fn = st.stats[0]
    assert (tp, fp, fn) == (1, 0, 1) and iou == pytest.approx(0.6)
    avg, per = st.pq_average({0: True, 1: False}, None)
    assert per[0]["pq"] == pytest.approx(0.4) and per[0]["sq"] == pytest.approx(0.6)
    assert per[0]["rq"] == pytest.approx(2 / 3)
    assert per[1]["pq"] == pytest.approx(46 / 66) and per[1]["rq"] == pytest.approx(1.0)
    assert avg["pq"] == pytest.approx((0.4 + 46 / 66) / 2)
    assert st.pq_average({0: True, 1: False}, True)[0]["pq"] == pytest.approx(0.4)


def test_pq_void_and_crowd_excluded():
    gt = np.zeros((10, 10), np.int64)  # 0 = void
    gt[0:5, 0:5] = 1  # 25 px
    gt[5:10, 5:10] = 9  # crowd of category 0
    pred = np.zeros_like(gt)
    pred[0:5, 0:5] = 1
    pred[0:5, 5:9] = 1  # 20 px on void: left out of the union -> IoU stays 1.0
    pred[6:10, 6:10] = 2  # unmatched, but on the crowd region of its category -> not an FP
    pred[5:7, 0:3] = 3  # unmatched, on void -> not an FP
    st = pq_single_image(gt, [_seg(1, 0), _seg(9, 0, crowd=1)], pred, [_seg(1, 0), _seg(2, 0), _seg(3, 0)])
    iou, tp, fp, fn = st.stats[0]
    assert (tp, fp, fn) == (1, 0, 0) and iou == pytest.approx(1.0)


def test_panoptic_evaluator_end_to_end(tmp_path):
    paths = make_coco_panoptic(tmp_path)
    name = unique_dataset_name("t_pq_eval")
    register_coco_panoptic(name, {}, **paths)
    dicts = DatasetCatalog.get(name)
    ev = COCOPanopticEvaluator(name, str(tmp_path / "out"))
    ev.reset()
    for d in dicts:
        ids = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        segs = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in d["segments_info"]
        ]
        ev.process(
            [{"image_id": d["image_id"], "file_name": d["file_name"]}],
            [{"panoptic_seg": (torch.from_numpy(ids).int(), segs)}],
        )
    res = ev.evaluate()["panoptic_seg"]
    assert (
        res["PQ"] == pytest.approx(100)
        and res["PQ_th"] == pytest.approx(100)
        and res["PQ_st"] == pytest.approx(100)
    )
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(written["annotations"]) == 2 and {
        s["category_id"] for s in written["annotations"][0]["segments_info"]
    } == {18, 40}


# ---------------------------------------------------------------- COCO AP


def _instances(masks, scores, classes):
    masks = torch.as_tensor(np.stack(masks)).bool()
    return Instances(
        (H, W),
        pred_masks=masks,
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes),
        pred_boxes=Boxes.from_masks(masks),
    )


def _gt_masks(js):
    coco = COCO(js)
    return {a["id"]: coco.annToMask(a).astype(bool) for a in coco.dataset["annotations"]}


def test_coco_ap_perfect_and_equals_cocoeval(tmp_path):
    js, img_dir, _ = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_ap")
    register_coco_instances(name, {}, js, img_dir)
    DatasetCatalog.get(name)  # sets the class map from the JSON
    gts = _gt_masks(js)
    ev = COCOEvaluator(name, str(tmp_path / "out"))
    ev.process([{"image_id": 7}], [{"instances": _instances([gts[1], gts[2]], [0.9, 0.8], [0, 1])}])
    assert ev.evaluate()["segm"]["AP"] == pytest.approx(100)

    # Imperfect: shifted mask, a false positive with a high score, a crowd-overlapping prediction.
    shifted = np.roll(gts[1], 3, axis=1)
    fp = np.zeros((H, W), bool)
    fp[20:40, 0:15] = True
    crowd_hit = gts[3].copy()
    ev = COCOEvaluator(name, str(tmp_path / "out2"))
    ev.process(
        [{"image_id": 7}],
        [{"instances": _instances([shifted, fp, gts[2], crowd_hit], [0.6, 0.95, 0.7, 0.5], [0, 0, 1, 1])}],
    )
    ours = ev.evaluate()["segm"]
    preds = json.loads((tmp_path / "out2" / "coco_instances_results.json").read_text())
    coco = COCO(js)
    e = COCOeval(coco, coco.loadRes(preds), "segm")
    e.evaluate()
    e.accumulate()
    e.summarize()
    for key, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), e.stats[:6]):
        assert ours[key] == pytest.approx(100 * v) if v >= 0 else np.isnan(ours[key]), key  # -1: undefined
    assert 0 < ours["AP"] < 100


def test_coco_ap_without_json_matches_json(tmp_path):
    """A dataset with no json_file in its metadata is converted from its dicts; same AP."""
    js, img_dir, _ = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_ap_dicts")
    DatasetCatalog.register(
        name, lambda: __import__("mask2former.data", fromlist=["x"]).load_coco_json(js, img_dir, name)
    )

    MetadataCatalog.get(name).set(evaluator_type="coco")
    DatasetCatalog.get(name)
    gts = _gt_masks(js)
    ev = COCOEvaluator(name)
    ev.process(
        [{"image_id": 7}],
        [{"instances": _instances([np.roll(gts[1], 2, axis=0), gts[2]], [0.9, 0.8], [0, 1])}],
    )
    res_dicts = ev.evaluate()["segm"]
    name2 = unique_dataset_name("t_ap_json")
    register_coco_instances(name2, {}, js, img_dir)
    DatasetCatalog.get(name2)
    ev2 = COCOEvaluator(name2)
    ev2.process(
        [{"image_id": 7}],
        [{"instances": _instances([np.roll(gts[1], 2, axis=0), gts[2]], [0.9, 0.8], [0, 1])}],
    )
    assert res_dicts["AP"] == pytest.approx(ev2.evaluate()["segm"]["AP"])


# ---------------------------------------------------------------- semantic


def test_sem_seg_perfect_and_partial(tmp_path):
    img_dir, gt_dir = tmp_path / "img", tmp_path / "gt"
    img_dir.mkdir()
    gt_dir.mkdir()
    lab = np.zeros((4, 4), np.uint8)
    lab[:, 2:] = 1
    lab[0, :] = 255
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img_dir / "x.png")
    Image.fromarray(lab).save(gt_dir / "x.png")
    name = unique_dataset_name("t_miou")
    register_sem_seg(name, str(img_dir), str(gt_dir), ["a", "b", "c"], image_ext=".png")
    inp = [{"file_name": str(img_dir / "x.png"), "sem_seg_file_name": str(gt_dir / "x.png")}]

    def scores(pred):
        return torch.nn.functional.one_hot(torch.from_numpy(pred).long(), 3).permute(2, 0, 1).float()

    ev = SemSegEvaluator(name)
    ev.process(inp, [{"sem_seg": scores(np.where(lab == 255, 2, lab))}])  # wrong only on ignored pixels
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100) and res["pACC"] == pytest.approx(100)
    # Partial: one labelled pixel of class 0 predicted as 1. Class 0: 5 of 6 right, IoU 5/6;
    # class 1: IoU 6/7; class 2 absent from GT -> left out.
    pred = lab.copy().astype(np.int64)
    pred[pred == 255] = 0
    pred[1, 0] = 1
    ev.reset()
    ev.process(inp, [{"sem_seg": scores(pred)}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100 * (5 / 6 + 6 / 7) / 2)
    assert res["pACC"] == pytest.approx(100 * 11 / 12)
    assert res["mACC"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert res["fwIoU"] == pytest.approx(100 * (0.5 * 5 / 6 + 0.5 * 6 / 7))
    assert np.isnan(res["IoU-c"])


def test_coco_rle_helper_roundtrip():
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:5] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    assert mask_util.area(rle) == 6
    assert id2rgb(np.array([[256 * 3 + 2]]))[0, 0].tolist() == [2, 3, 0]
