"""Datasets, mappers and loaders on tiny datasets written in each real format on the fly."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data import (
    DatasetCatalog,
    DatasetFormatError,
    MetadataCatalog,
    build_dataset_mapper,
    build_detection_test_loader,
    build_detection_train_loader,
    read_image,
    register_coco_instances,
    register_coco_panoptic,
    register_sem_seg,
)
from mask2former.data.datasets.cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from mask2former.utils.testing import (
    IMAGE_H,
    IMAGE_W,
    OBJ_COLOR,
    make_coco_instances,
    make_coco_panoptic,
    unique_dataset_name,
)

H, W = IMAGE_H, IMAGE_W


def make_sem_seg_folder(root, n: int = 3) -> tuple[str, str]:
    """ADE20K-style folders: images/*.jpg + annotations/*.png (class ids, 255 void)."""
    img_dir, gt_dir = root / "images", root / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = np.random.default_rng(k).integers(0, 200, (H, W, 3), dtype=np.uint8)
        lab = np.zeros((H, W), np.uint8)
        lab[:, W // 2 :] = 1
        lab[10:30, 20:44] = 2
        lab[0:4, :] = 255
        img[lab == 2] = OBJ_COLOR
        Image.fromarray(img).save(img_dir / f"img_{k}.png")
        Image.fromarray(lab).save(gt_dir / f"img_{k}.png")
    return str(img_dir), str(gt_dir)


def base_cfg(dataset: str, mapper: str, num_classes: int):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.INPUT.FORMAT = "RGB"
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 3
    return cfg


def _painted(image: torch.Tensor) -> torch.Tensor:
    """Pixels of [3, H, W] RGB uint8 close to the object colour."""
    c = torch.tensor(OBJ_COLOR, dtype=torch.int32)[:, None, None]
    return (image.int() - c).abs().amax(0) <= 40


def _check_alignment(mask: torch.Tensor, image: torch.Tensor, exact: bool) -> None:
    painted = _painted(image)
    if exact:
        assert torch.equal(mask, painted)
    else:  # resampled: object edges blend, the interiors must agree
        inter = (mask & painted).sum().item()
        union = (mask | painted).sum().item()
        assert union > 0 and inter / union > 0.8, inter / max(union, 1)


# ---------------------------------------------------------------- catalog and loading


def test_builtin_names_and_tables():
    names = set(DatasetCatalog.list())
    for n in (
        "coco_2017_train",
        "coco_2017_val_panoptic_with_sem_seg",
        "ade20k_sem_seg_val",
        "ade20k_panoptic_train",
        "ade20k_instance_val",
        "ade20k_full_sem_seg_train",
        "cityscapes_fine_instance_seg_train",
        "cityscapes_fine_panoptic_val",
        "mapillary_vistas_panoptic_train",
        "mapillary_vistas_sem_seg_val",
    ):
        assert n in names
    coco = MetadataCatalog.get("coco_2017_train_panoptic")
    assert len(coco.stuff_classes) == 133 and len(coco.thing_dataset_id_to_contiguous_id) == 80
    assert (
        coco.thing_dataset_id_to_contiguous_id[1] == 0 and coco.stuff_dataset_id_to_contiguous_id[200] == 132
    )
    assert len(MetadataCatalog.get("coco_2017_val").thing_classes) == 80
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes) == 150
    assert len(MetadataCatalog.get("ade20k_instance_val").thing_classes) == 100
    assert len(MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes) == 19
    assert len(MetadataCatalog.get("mapillary_vistas_sem_seg_val").stuff_classes) == 65


def test_missing_folder_names_path_and_step(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"prepare_ade20k_sem_seg"):
        DatasetCatalog.get("ade20k_sem_seg_val")


def test_coco_instances_polygon_rle_crowd(tmp_path):
    js, img_dir, obj = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_coco")
    register_coco_instances(name, {}, js, img_dir)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 1 and dicts[0]["image_id"] == 7 and len(dicts[0]["annotations"]) == 3
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat3", "cat9"] and meta.thing_dataset_id_to_contiguous_id == {3: 0, 9: 1}
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 1, 1]
    assert [a["iscrowd"] for a in dicts[0]["annotations"]] == [0, 0, 1]


def test_coco_unknown_category_names_file(tmp_path):
    js, img_dir, _ = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_coco_bad")
    register_coco_instances(
        name, {"thing_classes": ["x"], "thing_dataset_id_to_contiguous_id": {3: 0}}, js, img_dir
    )
    with pytest.raises(DatasetFormatError, match="instances.json"):
        DatasetCatalog.get(name)


def test_sem_seg_folder_loading_and_missing_image(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path)
    name = unique_dataset_name("t_sem")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and dicts[0]["sem_seg_file_name"].endswith("img_0.png")
    os.remove(os.path.join(img_dir, "img_1.png"))
    with pytest.raises(FileNotFoundError, match="img_1"):
        DatasetCatalog.get(name)


def _make_cityscapes(root):
    img = root / "leftImg8bit" / "val" / "aachen"
    gt = root / "gtFine" / "val" / "aachen"
    img.mkdir(parents=True)
    gt.mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img / "aachen_000000_000019_leftImg8bit.png")
    train = np.full((H, W), 255, np.uint8)
    train[:20] = 0
    Image.fromarray(train).save(gt / "aachen_000000_000019_gtFine_labelTrainIds.png")
    inst = np.full((H, W), 7, np.uint16)  # road
    inst[5:15, 5:15] = 26000  # car 0
    inst[20:30, 5:15] = 26001  # car 1
    inst[30:40, 30:40] = 24  # person crowd group
    Image.fromarray(inst).save(gt / "aachen_000000_000019_gtFine_instanceIds.png")
    return str(root / "leftImg8bit" / "val"), str(root / "gtFine" / "val")


def test_cityscapes_folder(tmp_path):
    img, gt = _make_cityscapes(tmp_path)
    sem = load_cityscapes_semantic(img, gt)
    assert len(sem) == 1 and sem[0]["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
    inst = load_cityscapes_instances(img, gt)[0]
    annos = sorted(inst["annotations"], key=lambda a: a["bbox"][1])
    assert [(a["category_id"], a["iscrowd"]) for a in annos] == [(2, 0), (2, 0), (0, 1)]
    assert mask_util.area(annos[0]["segmentation"]) == 100


def test_coco_panoptic_loading(tmp_path):
    paths = make_coco_panoptic(tmp_path)
    name = unique_dataset_name("t_pan")
    register_coco_panoptic(name, {}, **paths)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["dog", "sky"] and meta.thing_dataset_id_to_contiguous_id == {18: 0}
    seg = {s["id"]: s for s in dicts[0]["segments_info"]}
    assert seg[2000]["category_id"] == 1 and not seg[2000]["isthing"] and seg[7]["iscrowd"] == 1


# ---------------------------------------------------------------- image decoding


def test_read_image_conversions(tmp_path):
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(str(tmp_path / "g.png"), "BGR")
    assert out.shape == (H, W, 3) and (out[..., 0] == gray).all()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(str(tmp_path / "a.png"), "BGR")[0, 0].tolist() == [0, 0, 200]
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(tmp_path / "d.png")
    assert read_image(str(tmp_path / "d.png"), "RGB").shape == (H, W, 3)
    # EXIF orientation 6 (rotate 90 degrees clockwise on display): W x H after transpose
    img = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(str(tmp_path / "r.jpg")).shape == (W, H, 3)


def test_read_image_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match="bad.jpg"):
        read_image(str(tmp_path / "bad.jpg"))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DatasetFormatError, match="trunc.jpg"):
        read_image(str(tmp_path / "trunc.jpg"))


# ---------------------------------------------------------------- mappers


def _aug_cfg(cfg, crop: bool = True):
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 56, 72)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.CROP.ENABLED = crop
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.COLOR_AUG_SSD = False
    return cfg


@pytest.mark.parametrize("seed", range(4))
def test_instance_mapper_alignment(tmp_path, seed):
    js, img_dir, obj = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_inst_map")
    register_coco_instances(name, {}, js, img_dir)
    d = DatasetCatalog.get(name)[0]
    import random

    for mapper_name in ("mask_former_instance", "coco_instance_lsj"):
        cfg = _aug_cfg(base_cfg(name, mapper_name, 2))
        cfg.INPUT.IMAGE_SIZE = 64
        mapper = build_dataset_mapper(cfg, True)
        out = mapper(dict(d), random.Random(seed))
        assert (out["height"], out["width"]) == (H, W) and out["image"].dtype == torch.uint8
        inst = out["instances"]
        assert inst.gt_masks.dtype == torch.bool and inst.gt_classes.dtype == torch.int64
        assert inst.image_size == tuple(out["image"].shape[-2:])
        assert len(inst) <= 2  # the crowd region is never a target
        painted_present = _painted(out["image"]).any()
        cls0 = (inst.gt_classes == 0).nonzero().flatten()
        if len(cls0):
            _check_alignment(inst.gt_masks[cls0[0]], out["image"], exact=False)
        else:
            assert painted_present.item() is False or _painted(out["image"]).sum() < 4


def test_semantic_mapper_exact_flip_and_crop(tmp_path):
    """Without resizing, a flipped/cropped label must match the painted pixels exactly."""
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=1)
    name = unique_dataset_name("t_sem_map")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    d = DatasetCatalog.get(name)[0]
    cfg = _aug_cfg(base_cfg(name, "mask_former_semantic", 3))
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)  # identity resize
    cfg.INPUT.SIZE_DIVISIBILITY = 40
    import random

    flips = set()
    for seed in range(8):
        out = build_dataset_mapper(cfg, True)(dict(d), random.Random(seed))
        sem = out["sem_seg"]
        assert sem.shape == (40, 40) and out["image"].shape == (3, 40, 40)
        valid = torch.zeros_like(sem, dtype=torch.bool)
        valid[:32, :32] = True
        assert (sem[~valid] == 255).all()  # padding is ignore
        assert torch.equal(sem[:32, :32] == 2, _painted(out["image"][:, :32, :32]))
        inst = out["instances"]
        assert sorted(inst.gt_classes.tolist()) == sorted(set(sem.unique().tolist()) - {255})
        for m, c in zip(inst.gt_masks, inst.gt_classes):
            assert torch.equal(m, sem == c)
        flips.add(bool(sem[:32, :32].flip(-1).equal(sem[:32, :32])))
    assert out["image"].dtype == torch.uint8


def test_semantic_mapper_category_area_and_bgr(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=1)
    name = unique_dataset_name("t_sem_area")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    d = DatasetCatalog.get(name)[0]
    cfg = _aug_cfg(base_cfg(name, "mask_former_semantic", 3))
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.CROP.SIZE = (16, 16)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    cfg.INPUT.RANDOM_FLIP = "none"
    import random

    for seed in range(5):
        sem = build_dataset_mapper(cfg, True)(dict(d), random.Random(seed))["sem_seg"]
        _, counts = sem[sem != 255].unique(return_counts=True)
        assert len(counts) > 1 and counts.max() < 0.75 * counts.sum()
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.CROP.ENABLED = False
    out = build_dataset_mapper(cfg, True)(dict(d), random.Random(0))
    rgb = torch.from_numpy(np.asarray(Image.open(d["file_name"]))).permute(2, 0, 1)
    assert torch.equal(out["image"], rgb.flip(0))


def test_semantic_mapper_rejects_out_of_range_labels(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=1)
    name = unique_dataset_name("t_sem_bad")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b"], image_ext=".png")
    cfg = base_cfg(name, "mask_former_semantic", 2)  # labels go up to 2
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    with pytest.raises(DatasetFormatError, match="img_0.png"):
        build_dataset_mapper(cfg, True)(dict(DatasetCatalog.get(name)[0]))


@pytest.mark.parametrize("mapper_name", ["mask_former_panoptic", "coco_panoptic_lsj"])
def test_panoptic_mappers_alignment(tmp_path, mapper_name):
    paths = make_coco_panoptic(tmp_path)
    name = unique_dataset_name("t_pan_map")
    register_coco_panoptic(name, {}, **paths)
    d = DatasetCatalog.get(name)[0]
    cfg = _aug_cfg(base_cfg(name, mapper_name, 2))
    cfg.INPUT.IMAGE_SIZE = 64
    import random

    for seed in range(4):
        out = build_dataset_mapper(cfg, True)(dict(d), random.Random(seed))
        inst = out["instances"]
        assert set(inst.gt_classes.tolist()) <= {0, 1}
        dog = (inst.gt_classes == 0).nonzero().flatten()
        if len(dog):
            assert len(dog) == 1  # the crowd "dog" is not a target
            _check_alignment(inst.gt_masks[dog[0]], out["image"], exact=False)


def test_panoptic_png_json_mismatch_names_file(tmp_path):
    paths = make_coco_panoptic(tmp_path)
    with open(paths["panoptic_json"]) as f:
        data = json.load(f)
    data["annotations"][0]["segments_info"] = data["annotations"][0]["segments_info"][:1]
    with open(paths["panoptic_json"], "w") as f:
        json.dump(data, f)
    name = unique_dataset_name("t_pan_bad")
    register_coco_panoptic(name, {}, **paths)
    cfg = base_cfg(name, "coco_panoptic_lsj", 2)
    with pytest.raises(DatasetFormatError, match="000.png"):
        build_dataset_mapper(cfg, True)(dict(DatasetCatalog.get(name)[0]))


def test_empty_crop_gives_zero_instances(tmp_path):
    js, img_dir, _ = make_coco_instances(tmp_path)
    name = unique_dataset_name("t_empty")
    register_coco_instances(name, {}, js, img_dir)
    d = dict(DatasetCatalog.get(name)[0])
    d["annotations"] = [a for a in d["annotations"] if a["iscrowd"]]
    cfg = base_cfg(name, "coco_instance_lsj", 2)
    cfg.INPUT.IMAGE_SIZE = 32
    out = build_dataset_mapper(cfg, True)(d)
    assert len(out["instances"]) == 0 and out["instances"].gt_masks.shape == (0, 32, 32)


# ---------------------------------------------------------------- loaders


def _loader_ids(cfg, start_iter: int, n: int):
    it = iter(build_detection_train_loader(cfg, start_iter=start_iter))
    out = []
    for _ in range(n):
        batch = next(it)
        out.append([(b["file_name"], int(b["image"].float().sum())) for b in batch])
    return out


def test_train_loader_seeded_and_resumable(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=5)
    name = unique_dataset_name("t_loader")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    cfg = _aug_cfg(base_cfg(name, "mask_former_semantic", 3))
    cfg.INPUT.COLOR_AUG_SSD = True
    full = _loader_ids(cfg, 0, 6)
    assert all(len(b) == 2 for b in full)
    assert full == _loader_ids(cfg, 0, 6)  # seeded
    assert full[3:] == _loader_ids(cfg, 3, 3)  # resumed: same images and same augmentations


def test_train_loader_workers_match_single_process(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=5)
    name = unique_dataset_name("t_loader_w")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    cfg = _aug_cfg(base_cfg(name, "mask_former_semantic", 3))
    full = _loader_ids(cfg, 0, 4)
    cfg.DATALOADER.NUM_WORKERS = 2
    assert full[2:] == _loader_ids(cfg, 2, 2)  # independent of worker count


def test_test_loader_ordered(tmp_path):
    img_dir, gt_dir = make_sem_seg_folder(tmp_path, n=3)
    name = unique_dataset_name("t_test_loader")
    register_sem_seg(name, img_dir, gt_dir, ["a", "b", "c"], image_ext=".png")
    cfg = base_cfg(name, "mask_former_semantic", 3)
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 1000
    batches = list(build_detection_test_loader(cfg, name))
    assert [b[0]["file_name"][-9:] for b in batches] == ["img_0.png", "img_1.png", "img_2.png"]
    assert batches[0][0]["image"].shape == (3, 96, 128) and batches[0][0]["height"] == H
