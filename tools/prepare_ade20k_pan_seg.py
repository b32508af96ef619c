"""ADE20K panoptic annotations (COCO panoptic format) from the SceneParsing semantic labels
(ADEChallengeData2016/annotations/, 1..150) and the instance-challenge PNGs
(ADEChallengeData2016/annotations_instance/: R = instance class 1..100 in the order of the 100
ADE20K thing classes, G = instance index). Stuff classes become one segment each; thing pixels
come from the instance PNGs; other thing pixels are void. Writes
ade20k_panoptic_{train,val}.json and ade20k_panoptic_{train,val}/ (category id = ADE20K class 0..149)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image

from mask2former.data.datasets.builtin_meta import ADE20K_150_CATEGORIES
from mask2former.data.detection_utils import id2rgb, read_label_png

THING_IDS = [c[0] for c in ADE20K_150_CATEGORIES if c[2]]  # instance class k (1..100) -> THING_IDS[k - 1]
STUFF = {c[0] for c in ADE20K_150_CATEGORIES if not c[2]}


def read_instances(path: str) -> np.ndarray:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    return rgb


def panoptic_of(sem: np.ndarray, inst_rgb: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """sem [H, W] (1..150, 0 void), inst_rgb [H, W, 3] -> (segment ids [H, W], segments_info)."""
    ids = np.zeros(sem.shape, np.int64)
    segments = []
    next_id = 1
    for label in np.unique(sem):
        cat = int(label) - 1
        if label == 0 or cat not in STUFF:
            continue
        m = sem == label
        ids[m] = next_id
        segments.append({"id": next_id, "category_id": cat, "iscrowd": 0, "area": int(m.sum())})
        next_id += 1
    key = inst_rgb[..., 0] * 256 + inst_rgb[..., 1]
    for k in np.unique(key):
        cls = int(k) // 256
        if cls == 0:
            continue
        if cls > len(THING_IDS):
            raise ValueError(f"instance class {cls} outside 1..{len(THING_IDS)}")
        m = key == k
        ids[m] = next_id
        segments.append(
            {"id": next_id, "category_id": THING_IDS[cls - 1], "iscrowd": 0, "area": int(m.sum())}
        )
        next_id += 1
    for s in segments:  # areas after overlaps are resolved
        s["area"] = int((ids == s["id"]).sum())
    return ids, [s for s in segments if s["area"] > 0]


def convert(root: str, split: str, folder: str) -> None:
    img_dir = os.path.join(root, "images", folder)
    out_dir = os.path.join(root, f"ade20k_panoptic_{split}")
    os.makedirs(out_dir, exist_ok=True)
    images, anns = [], []
    for name in sorted(f for f in os.listdir(img_dir) if f.endswith(".jpg")):
        stem = name[:-4]
        sem = read_label_png(os.path.join(root, "annotations", folder, stem + ".png"))
        inst = read_instances(os.path.join(root, "annotations_instance", folder, stem + ".png"))
        ids, segs = panoptic_of(sem, inst)
        Image.fromarray(id2rgb(ids)).save(os.path.join(out_dir, stem + ".png"))
        images.append({"id": stem, "file_name": name, "height": sem.shape[0], "width": sem.shape[1]})
        anns.append({"image_id": stem, "file_name": stem + ".png", "segments_info": segs})
    cats = [{"id": c[0], "name": c[1], "isthing": c[2], "color": list(c[3])} for c in ADE20K_150_CATEGORIES]
    with open(os.path.join(root, f"ade20k_panoptic_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    print(f"{split}: {len(anns)} images")


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
