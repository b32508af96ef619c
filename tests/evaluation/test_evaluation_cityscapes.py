"""Cityscapes evaluators (official cityscapesscripts scoring) on a tiny Cityscapes folder written
on the fly: two images of one city with road / sidewalk / building / sky, void pixels, two cars,
a person and a car group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data import DatasetCatalog, MetadataCatalog
from mask2former.data.datasets.builtin_meta import (
    CITYSCAPES_CATEGORIES,
    instance_metadata,
    panoptic_metadata,
    semantic_metadata,
)
from mask2former.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluators,
    build_evaluator,
)
from mask2former.structures import Instances

H, W = 64, 128
CITY = "aachen"
STEMS = (f"{CITY}_000000_000019", f"{CITY}_000001_000019")
# Cityscapes label id -> train id for the classes used here
ROAD, SIDEWALK, BUILDING, SKY, PERSON, CAR = 7, 8, 11, 23, 24, 26
TRAIN_ID = {ROAD: 0, SIDEWALK: 1, BUILDING: 2, SKY: 10, PERSON: 11, CAR: 13}
UNLABELED = 0  # void (ignoreInEval)
THING = {PERSON: 0, CAR: 2}  # contiguous thing ids of `instance_metadata`


def _label_images(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds int32) of image k. Every instance has >= 100 pixels (the
    smallest region cityscapesscripts scores)."""
    lab = np.full((H, W), ROAD, np.uint8)
    lab[:16] = SKY
    lab[16:32, :64] = BUILDING
    lab[16:32, 64:] = SIDEWALK
    lab[60:, :] = UNLABELED  # ego-vehicle-like void strip
    inst = lab.astype(np.int32)
    # two cars (20x16 = 320 px), one person (12x12 = 144 px), a car group (bare label id)
    inst[36:52, 4 + k : 24 + k] = CAR * 1000 + 0
    inst[36:52, 40:60] = CAR * 1000 + 1
    inst[38:50, 80:92] = PERSON * 1000 + 0
    inst[48:58, 100:120] = CAR  # group: no single instance
    lab = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
    return lab, inst


def make_cityscapes(root) -> tuple[str, str]:
    img_dir = root / "leftImg8bit" / "val"
    gt_dir = root / "gtFine" / "val"
    (img_dir / CITY).mkdir(parents=True)
    (gt_dir / CITY).mkdir(parents=True)
    for k, stem in enumerate(STEMS):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img_dir / CITY / f"{stem}_leftImg8bit.png")
        lab, inst = _label_images(k)
        Image.fromarray(lab).save(gt_dir / CITY / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / CITY / f"{stem}_gtFine_instanceIds.png")
        train = np.full((H, W), 255, np.uint8)
        for label_id, train_id in TRAIN_ID.items():
            train[lab == label_id] = train_id
        Image.fromarray(train).save(gt_dir / CITY / f"{stem}_gtFine_labelTrainIds.png")
    return str(img_dir), str(gt_dir)


def _register(root, kind: str) -> str:
    img_dir, gt_dir = make_cityscapes(root)
    i = 0
    while f"t_cityscapes_{kind}_{i}" in DatasetCatalog:
        i += 1
    name = f"t_cityscapes_{kind}_{i}"
    DatasetCatalog.register(name, lambda: [])
    meta = {
        "sem": semantic_metadata(CITYSCAPES_CATEGORIES),
        "inst": instance_metadata(CITYSCAPES_CATEGORIES),
        "pan": panoptic_metadata(CITYSCAPES_CATEGORIES),
    }[kind]
    etype = {"sem": "cityscapes_sem_seg", "inst": "cityscapes_instance", "pan": "cityscapes_panoptic_seg"}
    MetadataCatalog.get(name).set(
        image_dir=img_dir, gt_dir=gt_dir, evaluator_type=etype[kind], ignore_label=255, **meta
    )
    return name


def _inputs(root) -> list[dict]:
    img_dir = root / "leftImg8bit" / "val" / CITY
    return [
        {"file_name": str(img_dir / f"{s}_leftImg8bit.png"), "image_id": s, "height": H, "width": W}
        for s in STEMS
    ]


def _scores(train_ids: np.ndarray) -> torch.Tensor:
    """[19, H, W] scores whose argmax is `train_ids` (255 / void -> train id 0, any guess)."""
    t = torch.from_numpy(np.where(train_ids == 255, 0, train_ids).astype(np.int64))
    return torch.nn.functional.one_hot(t, 19).permute(2, 0, 1).float() * 5.0 + 0.1


def _train_ids(lab: np.ndarray) -> np.ndarray:
    out = np.full(lab.shape, 255, np.uint8)
    for label_id, train_id in TRAIN_ID.items():
        out[lab == label_id] = train_id
    return out


# ---------------------------------------------------------------- semantic


def _run_sem(ev, root, edit=None) -> dict:
    ev.reset()
    for inp in _inputs(root):
        k = STEMS.index(inp["image_id"])
        tid = _train_ids(_label_images(k)[0])
        if edit is not None:
            tid = edit(tid)
        ev.process([inp], [{"sem_seg": _scores(tid)}])
    return ev.evaluate()["sem_seg"]


def test_sem_seg_perfect_is_100(tmp_path):
    ev = CityscapesSemSegEvaluator(_register(tmp_path, "sem"))
    res = _run_sem(ev, tmp_path)
    assert res["IoU"] == pytest.approx(100.0) and res["iIoU"] == pytest.approx(100.0)
    assert res["IoU_sup"] == pytest.approx(100.0)
    assert all(type(v) is float for v in res.values())


def test_sem_seg_designed_errors_give_hand_computed_iou(tmp_path):
    """Rows 32..35 of road predicted as sidewalk (4 x 128 = 512 px, minus nothing: cars start at
    row 36); void rows 60..63 predicted as sidewalk (ignored by the official IoU)."""
    ev = CityscapesSemSegEvaluator(_register(tmp_path, "sem"))

    def edit(tid):
        tid = tid.copy()
        tid[32:36] = TRAIN_ID[SIDEWALK]
        tid[60:] = TRAIN_ID[SIDEWALK]
        return tid

    res = _run_sem(ev, tmp_path, edit)
    lab0, lab1 = _label_images(0)[0], _label_images(1)[0]
    road = int((lab0 == ROAD).sum() + (lab1 == ROAD).sum())
    sidewalk = int((lab0 == SIDEWALK).sum() + (lab1 == SIDEWALK).sum())
    moved = 2 * 4 * W  # two images, 4 rows each, all road
    road_iou = (road - moved) / road  # TP = road - moved, FN = moved, FP = 0
    sidewalk_iou = sidewalk / (sidewalk + moved)  # FP = moved road pixels; void ones don't count
    # classes present: road, sidewalk, building, sky, person, car (others are NaN and skipped)
    expected = (road_iou + sidewalk_iou + 4.0) / 6.0
    assert res["IoU"] == pytest.approx(100.0 * expected, abs=1e-6)
    assert res["IoU"] < 100.0


def test_sem_seg_reset_allows_second_round(tmp_path):
    ev = CityscapesSemSegEvaluator(_register(tmp_path, "sem"))
    first = _run_sem(ev, tmp_path, lambda t: np.zeros_like(t))  # everything road
    second = _run_sem(ev, tmp_path)
    assert first["IoU"] < 50.0 and second["IoU"] == pytest.approx(100.0)


def test_sem_seg_missing_prediction_raises(tmp_path):
    ev = CityscapesSemSegEvaluator(_register(tmp_path, "sem"))
    inp = _inputs(tmp_path)[0]
    ev.process([inp], [{"sem_seg": _scores(_train_ids(_label_images(0)[0]))}])
    with pytest.raises(RuntimeError, match="no prediction"):
        ev.evaluate()


# ---------------------------------------------------------------- instances


def _gt_instances(k: int) -> list[tuple[int, np.ndarray]]:
    inst = _label_images(k)[1]
    return [(int(i) // 1000, inst == i) for i in np.unique(inst) if i >= 1000]


def _instances(items: list[tuple[int, np.ndarray, float]], thing: dict[int, int]) -> Instances:
    masks = np.stack([m for _, m, _ in items]) if items else np.zeros((0, H, W), bool)
    return Instances(
        (H, W),
        pred_masks=torch.from_numpy(masks),
        scores=torch.tensor([s for _, _, s in items], dtype=torch.float32),
        pred_classes=torch.tensor([thing[c] for c, _, _ in items], dtype=torch.int64),
    )


def _run_inst(ev, root, per_image, thing=THING) -> dict:
    ev.reset()
    for inp in _inputs(root):
        k = STEMS.index(inp["image_id"])
        ev.process([inp], [{"instances": _instances(per_image(k), thing)}])
    return ev.evaluate()["segm"]


def _perfect(k):
    return [(c, m, 0.9 - 0.1 * j) for j, (c, m) in enumerate(_gt_instances(k))]


def test_instances_perfect_is_100(tmp_path, monkeypatch):
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_inst

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ev = CityscapesInstanceEvaluator(_register(tmp_path, "inst"))
    res = _run_inst(ev, tmp_path, _perfect)
    # nothing left in the working directory (matches.json) or in the module's global args
    assert list(cwd.iterdir()) == [] and cs_inst.args.predictionPath is None
    assert res["AP"] == pytest.approx(100.0) and res["AP50"] == pytest.approx(100.0)
    assert all(type(v) is float for v in res.values())


def test_instances_on_car_group_are_not_false_positives(tmp_path):
    ev = CityscapesInstanceEvaluator(_register(tmp_path, "inst"))
    group = _label_images(0)[1] == CAR

    res = _run_inst(ev, tmp_path, lambda k: [*_perfect(k), (CAR, group, 0.95)])
    assert res["AP"] == pytest.approx(100.0)


def test_instances_missing_one_car_gives_hand_computed_ap(tmp_path):
    """Car 1 of image 0 not predicted: car recall 3/4 at precision 1 at every overlap ->
    cityscapesscripts' step integration gives car AP 0.75 (the artificial point (r=0, p=1) plus
    steps of the sorted scores); person AP 1 -> mean 87.5."""
    ev = CityscapesInstanceEvaluator(_register(tmp_path, "inst"))

    def drop(k):
        items = _perfect(k)
        if k == 0:
            cars = [i for i, (c, _, _) in enumerate(items) if c == CAR]
            items.pop(cars[1])
        return items

    res = _run_inst(ev, tmp_path, drop)
    assert res["AP"] < 100.0
    assert res["AP"] == pytest.approx(87.5) and res["AP50"] == pytest.approx(87.5)


@pytest.mark.parametrize("score,expected", [(0.99, 62.5), (0.05, 100.0)])
def test_instances_false_positive_ranked_by_score(tmp_path, score, expected):
    """A person where there is only sky, in each image. Scored above every true person, person
    precision is 1/2 at recall 1 and 0 before -> person AP 0.25, mean with car (1) 62.5. Scored
    below them, it comes after full recall at precision 1 -> AP stays 100."""
    ev = CityscapesInstanceEvaluator(_register(tmp_path, "inst"))
    sky = np.zeros((H, W), bool)
    sky[:12, :20] = True
    res = _run_inst(ev, tmp_path, lambda k: [*_perfect(k), (PERSON, sky, score)])
    assert res["AP"] == pytest.approx(expected) and res["AP50"] == pytest.approx(expected)


def test_panoptic_metadata_classes_over_all_19(tmp_path):
    """Panoptic datasets name all 19 classes in `thing_classes`; predicted classes are then
    contiguous ids over the 19 classes (car = 13)."""
    name = _register(tmp_path, "pan")
    cfg = get_cfg()
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    evs = build_evaluator(cfg, name, output_folder=str(tmp_path / "out"))
    assert isinstance(evs, DatasetEvaluators)
    inst_ev = next(e for e in evs._evaluators if isinstance(e, CityscapesInstanceEvaluator))
    res = _run_inst(inst_ev, tmp_path, _perfect, thing={PERSON: 11, CAR: 13})
    assert res["AP"] == pytest.approx(100.0)
