#!/usr/bin/env python
"""Generate the bundled synthetic "shapes" dataset (see mask2former/data/datasets/shapes.py).

    python tools/prepare_shapes_dataset.py                    # -> $DETECTRON2_DATASETS/shapes (datasets/shapes)
    python tools/prepare_shapes_dataset.py --root /data/shapes --num-train 1000 --force

The files are the same on every machine for the same arguments. An existing dataset is kept
unless --force is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.data.datasets.shapes import DEFAULT_SPLITS, dataset_exists, default_root, generate_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=default_root(), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLITS["train"][0], help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLITS["val"][0], help="validation images")
    parser.add_argument("--force", action="store_true", help="delete and regenerate an existing dataset")
    args = parser.parse_args(argv)
    if dataset_exists(args.root) and not args.force:
        print(f"shapes dataset already present in {args.root} (use --force to regenerate)")
        return args.root
    if args.force and os.path.isdir(args.root):
        shutil.rmtree(args.root)
    start = time.perf_counter()
    splits = {
        "train": (args.num_train, DEFAULT_SPLITS["train"][1]),
        "val": (args.num_val, DEFAULT_SPLITS["val"][1]),
    }
    generate_dataset(args.root, splits)
    print(
        f"wrote the shapes dataset ({args.num_train} train + {args.num_val} val images) to {args.root} "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return args.root


if __name__ == "__main__":
    main()
