#!/usr/bin/env python
"""Draw the instance predictions an evaluation saved (coco_instances_results.json, COCO result
format) next to each image's ground truth, as Detectron2's tool of the same name.

    python tools/visualize_json_results.py \\
        --input output/shapes/inference/shapes_val_panoptic/coco_instances_results.json \\
        --dataset shapes_val_panoptic --output vis_json

One PNG per image of the dataset, named after its file: predictions with a score of at least
--conf-threshold on the left, the ground truth on the right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.data import DatasetCatalog, MetadataCatalog, read_image  # noqa: E402
from mask2former.structures import Boxes, Instances  # noqa: E402
from mask2former.utils.visualizer import VisImage, Visualizer  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="COCO-format instance predictions (JSON)")
    parser.add_argument("--output", required=True, help="folder for the drawings")
    parser.add_argument(
        "--dataset", default="coco_2017_val", help="registered dataset (default: %(default)s)"
    )
    parser.add_argument(
        "--conf-threshold", type=float, default=0.5, help="lowest score drawn (default: %(default)s)"
    )
    parser.add_argument(
        "--scale", type=float, default=2.0, help="drawing size / image size (default: %(default)s)"
    )
    return parser


def load_predictions(path: str) -> list[dict]:
    with open(path) as f:
        try:
            predictions = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(predictions, list) or any(
        not isinstance(p, dict) or not {"image_id", "category_id", "score"} <= p.keys() for p in predictions
    ):
        raise ValueError(f"{path}: expected a list of COCO results with image_id, category_id and score")
    return predictions


def to_instances(
    predictions: list[dict], hw: tuple[int, int], dataset_to_contiguous: dict[int, int]
) -> Instances:
    """COCO results of one image (dataset category ids) -> Instances with contiguous classes."""
    unknown = {p["category_id"] for p in predictions} - set(dataset_to_contiguous)
    if unknown:
        raise KeyError(f"predicted category ids {sorted(unknown)} are not thing classes of the dataset")
    fields: dict = {
        "scores": torch.tensor([float(p["score"]) for p in predictions]),
        "pred_classes": torch.tensor(
            [dataset_to_contiguous[p["category_id"]] for p in predictions], dtype=torch.int64
        ),
    }
    if predictions and "segmentation" in predictions[0]:
        masks = [mask_util.decode(p["segmentation"]) for p in predictions]
        fields["pred_masks"] = torch.from_numpy(np.stack(masks).astype(bool))
    if predictions and "bbox" in predictions[0]:
        xywh = torch.tensor([p["bbox"] for p in predictions], dtype=torch.float32)
        fields["pred_boxes"] = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
    if not predictions:
        fields = {"scores": torch.zeros(0), "pred_classes": torch.zeros(0, dtype=torch.int64)}
    return Instances(hw, **fields)


def main(argv=None) -> list[str]:
    args = get_parser().parse_args(argv)
    predictions = load_predictions(args.input)
    metadata = MetadataCatalog.get(args.dataset)
    dataset_to_contiguous = dict(metadata.thing_dataset_id_to_contiguous_id)
    by_image = defaultdict(list)
    for p in predictions:
        if p["score"] >= args.conf_threshold:
            by_image[p["image_id"]].append(p)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for dic in DatasetCatalog.get(args.dataset):
        img = read_image(dic["file_name"], "RGB")
        hw = img.shape[:2]
        pred = Visualizer(img, metadata, scale=args.scale).draw_instance_predictions(
            to_instances(by_image.get(dic["image_id"], []), hw, dataset_to_contiguous)
        )
        gt = Visualizer(img, metadata, scale=args.scale).draw_dataset_dict(dic)
        path = os.path.join(args.output, os.path.splitext(os.path.basename(dic["file_name"]))[0] + ".png")
        VisImage(np.concatenate([pred.get_image(), gt.get_image()], axis=1)).save(path)
        written.append(path)
    print(f"wrote {len(written)} drawing(s) to {args.output}")
    return written


if __name__ == "__main__":
    main()
