"""Images per second per worker of a training mapper (default: COCO panoptic LSJ) on synthetic
640x480 images written in COCO panoptic format to a temporary folder.

    python tools/benchmark_data.py [--mapper coco_panoptic_lsj] [--images 20] [--iters 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mask2former.config import get_cfg
from mask2former.data import DatasetCatalog, build_dataset_mapper, register_coco_panoptic
from mask2former.data.detection_utils import id2rgb


def write_synthetic(root: str, n: int, h: int = 480, w: int = 640, segments: int = 20) -> dict:
    """n images with `segments` rectangular segments each (half things), COCO panoptic format."""
    rng = np.random.default_rng(0)
    img_dir, pan_dir = os.path.join(root, "images"), os.path.join(root, "panoptic")
    os.makedirs(img_dir)
    os.makedirs(pan_dir)
    anns, images = [], []
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(img_dir, f"{k}.jpg")
        )
        ids = np.zeros((h, w), np.int64)
        infos = []
        for s in range(1, segments + 1):
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            ids[y : y + rng.integers(20, 200), x : x + rng.integers(20, 200)] = s
            infos.append({"id": s, "category_id": 1 + s % 2, "iscrowd": 0})
        Image.fromarray(id2rgb(ids)).save(os.path.join(pan_dir, f"{k}.png"))
        anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": infos})
        images.append({"id": k, "file_name": f"{k}.jpg", "height": h, "width": w})
    cats = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    js = os.path.join(root, "panoptic.json")
    with open(js, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return {"image_root": img_dir, "panoptic_root": pan_dir, "panoptic_json": js}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mapper", default="coco_panoptic_lsj")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--image-size", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)  # one data-loader worker = one thread
    with tempfile.TemporaryDirectory() as root:
        register_coco_panoptic("benchmark_synthetic", {}, **write_synthetic(root, args.images))
        dicts = DatasetCatalog.get("benchmark_synthetic")
        cfg = get_cfg()
        cfg.DATASETS.TRAIN = ("benchmark_synthetic",)
        cfg.INPUT.DATASET_MAPPER_NAME = args.mapper
        cfg.INPUT.IMAGE_SIZE = args.image_size
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
        mapper = build_dataset_mapper(cfg, True)
        random.seed(0)
        for d in dicts[:3]:
            mapper(dict(d))  # warm-up
        t0 = time.perf_counter()
        for i in range(args.iters):
            mapper(dict(dicts[i % len(dicts)]))
        dt = time.perf_counter() - t0
    print(
        f"{args.mapper}: {args.iters / dt:.1f} images/s per worker (1 thread, 640x480 input, IMAGE_SIZE {args.image_size})"
    )


if __name__ == "__main__":
    main()
