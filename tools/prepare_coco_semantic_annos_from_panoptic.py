"""Semantic labels for COCO panoptic (133 classes, 255 = void) from the panoptic PNGs + JSON:
writes coco/panoptic_semseg_{train,val}2017/<image>.png under $DETECTRON2_DATASETS."""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os

import numpy as np
from PIL import Image

from mask2former.data.datasets.builtin_meta import COCO_CATEGORIES
from mask2former.data.detection_utils import DatasetFormatError, read_panoptic_png


def convert_one(ann: dict, pan_dir: str, out_dir: str, id_map: dict) -> None:
    src = os.path.join(pan_dir, ann["file_name"])
    ids = read_panoptic_png(src)
    sem = np.full(ids.shape, 255, np.uint8)
    for s in ann["segments_info"]:
        if s["category_id"] not in id_map:
            raise DatasetFormatError(f"{src}: unknown category_id {s['category_id']}")
        sem[ids == s["id"]] = id_map[s["category_id"]]
    Image.fromarray(sem).save(os.path.join(out_dir, ann["file_name"]))


def convert(pan_json: str, pan_dir: str, out_dir: str, workers: int = 4) -> None:
    with open(pan_json) as f:
        anns = json.load(f)["annotations"]
    os.makedirs(out_dir, exist_ok=True)
    id_map = {c[0]: i for i, c in enumerate(COCO_CATEGORIES)}
    fn = functools.partial(convert_one, pan_dir=pan_dir, out_dir=out_dir, id_map=id_map)
    with mp.Pool(workers) as pool:
        pool.map(fn, anns, chunksize=16)
    print(f"wrote {len(anns)} labels to {out_dir}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "coco"))
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args()
    for split in ("train", "val"):
        convert(
            os.path.join(args.root, "annotations", f"panoptic_{split}2017.json"),
            os.path.join(args.root, f"panoptic_{split}2017"),
            os.path.join(args.root, f"panoptic_semseg_{split}2017"),
            args.workers,
        )


if __name__ == "__main__":
    main()
