#!/usr/bin/env python
"""Draw a dataset's ground truth into a folder, as Detectron2's tool of the same name:

    --source annotation   the registered dataset's own annotations on the original images
    --source dataloader   what training sees: images and targets after the training mapper
                          (INPUT.DATASET_MAPPER_NAME) and its augmentations, with padding

    python tools/visualize_data.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \\
        --source dataloader --output-dir vis_data --num-images 8

One PNG per image, named after its file (dataloader: "<n>_<file>" in loading order).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.config import get_cfg  # noqa: E402
from mask2former.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader, read_image  # noqa: E402
from mask2former.utils.visualizer import VisImage, Visualizer  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config naming the datasets and mapper"
    )
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True,
                        help="raw annotations, or the training data loader's output")  # fmt: skip
    parser.add_argument(
        "--output-dir", default="./vis_data", help="folder for the drawings (default: %(default)s)"
    )
    parser.add_argument("--dataset", help="annotation source: dataset to draw (default: DATASETS.TRAIN[0])")
    parser.add_argument("--num-images", type=int, default=10, help="images to draw (default: %(default)s)")
    parser.add_argument(
        "--scale", type=float, default=2.0, help="drawing size / image size (default: %(default)s)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser


def setup_cfg(args: argparse.Namespace):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", 0])  # a few images: no worker processes
    cfg.freeze()
    return cfg


def _to_rgb(image: torch.Tensor, fmt: str) -> np.ndarray:
    """Mapper output [3, H, W] in INPUT.FORMAT -> RGB uint8 [H, W, 3]."""
    img = image.permute(1, 2, 0).numpy()
    img = img[:, :, ::-1] if fmt == "BGR" else img
    return np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))


def draw_training_sample(sample: dict, metadata, fmt: str, scale: float) -> VisImage:
    """A mapped training dict: its image with each target mask ("instances": gt_masks,
    gt_classes, contiguous ids) drawn as a segment, things in their own shades."""
    img = _to_rgb(sample["image"], fmt)
    inst = sample["instances"]
    masks = inst.gt_masks.bool().numpy()
    classes = inst.gt_classes.tolist()
    thing_ids = set(getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).values())
    panoptic = np.zeros(img.shape[:2], dtype=np.int64)
    segments = []
    for i, (mask, cls) in enumerate(zip(masks, classes)):
        panoptic[mask] = i + 1
        segments.append({"id": i + 1, "category_id": cls, "isthing": cls in thing_ids})
    return Visualizer(img, metadata, scale=scale).draw_panoptic_seg(panoptic, segments)


def main(argv=None) -> list[str]:
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    os.makedirs(args.output_dir, exist_ok=True)
    written = []

    def save(drawing: VisImage, name: str) -> None:
        path = os.path.join(args.output_dir, os.path.splitext(os.path.basename(name))[0] + ".png")
        drawing.save(path)
        written.append(path)

    if args.source == "annotation":
        name = args.dataset or cfg.DATASETS.TRAIN[0]
        metadata = MetadataCatalog.get(name)
        for dic in DatasetCatalog.get(name)[: args.num_images]:
            img = read_image(dic["file_name"], "RGB")
            save(Visualizer(img, metadata, scale=args.scale).draw_dataset_dict(dic), dic["file_name"])
    else:
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        count = 0
        for batch in build_detection_train_loader(cfg):
            for sample in batch:
                if count == args.num_images:
                    break
                drawn = draw_training_sample(sample, metadata, cfg.INPUT.FORMAT, args.scale)
                save(drawn, f"{count:04d}_{os.path.basename(sample['file_name'])}")
                count += 1
            if count == args.num_images:
                break
    print(f"wrote {len(written)} drawing(s) to {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
