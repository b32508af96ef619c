"""ADE20K SceneParsing labels for training: 0 (void) -> 255, class k (1..150) -> k - 1.
Writes ADEChallengeData2016/annotations_detectron2/{training,validation}/ under $DETECTRON2_DATASETS."""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from mask2former.data.detection_utils import read_label_png


def convert(src_dir: str, out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    names = sorted(f for f in os.listdir(src_dir) if f.endswith(".png"))
    for name in names:
        lab = read_label_png(os.path.join(src_dir, name))
        out = (lab - 1).astype(np.int64)
        out[lab == 0] = 255
        Image.fromarray(out.astype(np.uint8)).save(os.path.join(out_dir, name))
    return len(names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADEChallengeData2016")
    )
    args = p.parse_args()
    for split in ("training", "validation"):
        n = convert(
            os.path.join(args.root, "annotations", split),
            os.path.join(args.root, "annotations_detectron2", split),
        )
        print(f"{split}: {n} labels")


if __name__ == "__main__":
    main()
