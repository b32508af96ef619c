"""ADE20K instance annotations (COCO instances JSON, RLE masks) from the instance-challenge PNGs
(ADEChallengeData2016/annotations_instance/: R = instance class 1..100, G = instance index).
Category id = the ADE20K class id (0..149) of the thing. Writes ade20k_instance_{train,val}.json."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from mask2former.data.datasets.builtin_meta import ADE20K_150_CATEGORIES

THINGS = [c for c in ADE20K_150_CATEGORIES if c[2]]


def instances_of(inst_rgb: np.ndarray, image_id, start_id: int) -> list[dict]:
    key = inst_rgb[..., 0].astype(np.int64) * 256 + inst_rgb[..., 1]
    anns = []
    for k in np.unique(key):
        cls = int(k) // 256
        if cls == 0:
            continue
        if cls > len(THINGS):
            raise ValueError(f"instance class {cls} outside 1..{len(THINGS)}")
        rle = mask_util.encode(np.asfortranarray((key == k).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": start_id + len(anns),
                "image_id": image_id,
                "category_id": THINGS[cls - 1][0],
                "segmentation": rle,
                "area": float(mask_util.area(rle)),
                "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    return anns


def convert(root: str, split: str, folder: str) -> None:
    inst_dir = os.path.join(root, "annotations_instance", folder)
    images, anns = [], []
    for name in sorted(f for f in os.listdir(inst_dir) if f.endswith(".png")):
        stem = name[:-4]
        with Image.open(os.path.join(inst_dir, name)) as im:
            rgb = np.asarray(im.convert("RGB"))
        images.append(
            {"id": len(images) + 1, "file_name": stem + ".jpg", "height": rgb.shape[0], "width": rgb.shape[1]}
        )
        anns += instances_of(rgb, images[-1]["id"], len(anns) + 1)
    cats = [{"id": c[0], "name": c[1]} for c in THINGS]
    with open(os.path.join(root, f"ade20k_instance_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    print(f"{split}: {len(images)} images, {len(anns)} instances")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADEChallengeData2016")
    )
    args = p.parse_args()
    for split, folder in (("train", "training"), ("val", "validation")):
        convert(args.root, split, folder)


if __name__ == "__main__":
    main()
