"""Cityscapes fine annotations in the layout of the official release:

    cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_{labelTrainIds,instanceIds}.png
    cityscapes/gtFine/cityscapes_panoptic_{train,val}.json + cityscapes_panoptic_{train,val}/

`labelTrainIds` and the panoptic files are made by cityscapesscripts
(`csCreateTrainIdLabelImgs`, `csCreatePanopticImgs`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pycocotools.mask as mask_util

from ..detection_utils import read_label_png
from ..path_check import check_dataset_paths
from .coco import BBOX_MODE_XYWH_ABS, require_path

logger = logging.getLogger(__name__)

# Cityscapes label ids of the classes with instances that are evaluated -> contiguous 0..7.
CITYSCAPES_THING_IDS = {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
_PREPARE = "Run cityscapesscripts' csCreateTrainIdLabelImgs (and csCreatePanopticImgs for panoptic)."


def _city_files(image_dir: str, gt_dir: str) -> list[tuple[str, str]]:
    """(image file, label-file prefix) for every image under <image_dir>/<city>/."""
    require_path(image_dir, "Cityscapes image folder", "Download leftImg8bit_trainvaltest.zip.")
    require_path(gt_dir, "Cityscapes label folder", "Download gtFine_trainvaltest.zip.")
    files = []
    for city in sorted(os.listdir(image_dir)):
        city_img = os.path.join(image_dir, city)
        for name in sorted(os.listdir(city_img)):
            if not name.endswith("_leftImg8bit.png"):
                continue
            stem = name[: -len("_leftImg8bit.png")]
            files.append((os.path.join(city_img, name), os.path.join(gt_dir, city, stem + "_gtFine_")))
    if not files:
        raise FileNotFoundError(f"No *_leftImg8bit.png images under {image_dir}")
    return files


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> list[dict]:
    """Dicts with `file_name`, `sem_seg_file_name` (labelTrainIds, 255 = void), `height`, `width`."""
    dicts = []
    for image_file, prefix in _city_files(image_dir, gt_dir):
        label = prefix + "labelTrainIds.png"
        require_path(label, "Cityscapes train-id label", _PREPARE)
        dicts.append({"file_name": image_file, "sem_seg_file_name": label, "height": 1024, "width": 2048})
    return check_dataset_paths(dicts, image_dir, {"file_name": image_dir, "sem_seg_file_name": gt_dir}, True)


def load_cityscapes_instances(image_dir: str, gt_dir: str) -> list[dict]:
    """Instances from `*_gtFine_instanceIds.png` (id = label_id * 1000 + k for instances; a bare
    label id of an instance class marks a crowd group). Annotations carry RLE masks."""
    dicts = []
    for image_file, prefix in _city_files(image_dir, gt_dir):
        inst_file = prefix + "instanceIds.png"
        ids = read_label_png(inst_file)
        h, w = ids.shape
        annos = []
        for seg_id in np.unique(ids):
            label = int(seg_id) // 1000 if seg_id >= 1000 else int(seg_id)
            if label not in CITYSCAPES_THING_IDS:
                continue
            mask = np.asfortranarray((ids == seg_id).astype(np.uint8))
            rle = mask_util.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            annos.append(
                {
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "bbox_mode": BBOX_MODE_XYWH_ABS,
                    "category_id": CITYSCAPES_THING_IDS[label],
                    "segmentation": rle,
                    "iscrowd": int(seg_id < 1000),
                }
            )
        stem = os.path.basename(image_file)[: -len("_leftImg8bit.png")]
        dicts.append(
            {"file_name": image_file, "image_id": stem, "height": h, "width": w, "annotations": annos}
        )
    logger.info("Loaded %d Cityscapes images with instances from %s", len(dicts), gt_dir)
    return dicts


def load_cityscapes_panoptic(image_dir: str, gt_dir: str, gt_json: str, meta) -> list[dict]:
    """Cityscapes panoptic (COCO panoptic format made by csCreatePanopticImgs); images are found
    under leftImg8bit/<split>/<city>/ from the image id `<city>_<seq>_<frame>`."""
    from .coco_panoptic import load_coco_panoptic_json

    require_path(gt_json, "Cityscapes panoptic JSON", _PREPARE)
    dicts = load_coco_panoptic_json(gt_json, image_dir, gt_dir, meta)
    label_dir = os.path.dirname(os.path.normpath(gt_dir))  # cityscapes/gtFine
    split = os.path.basename(os.path.normpath(image_dir))
    for d in dicts:
        stem = str(d["image_id"])
        city = stem.split("_")[0]
        d["file_name"] = os.path.join(image_dir, city, stem + "_leftImg8bit.png")
        d["sem_seg_file_name"] = os.path.join(label_dir, split, city, stem + "_gtFine_labelTrainIds.png")
    return check_dataset_paths(dicts, gt_json, {"file_name": image_dir, "sem_seg_file_name": label_dir})


__all__ = ["load_cityscapes_instances", "load_cityscapes_panoptic", "load_cityscapes_semantic"]
