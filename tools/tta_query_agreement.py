#!/usr/bin/env python
"""Do a model's queries predict the same segment in every test-time augmentation view? This is
what merging per-query predictions across views (panoptic and instance TTA) relies on.

For each image of a dataset, over the queries that detect an object (best class not "no object",
probability > --score-threshold) in the first view of TEST.AUG (put the test size first), prints
the mean mask IoU with the same query in each other view, how often its class is the same, and
the mean IoU with the best-matching query of the other view (what matching queries could reach).

    python tools/tta_query_agreement.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \\
        MODEL.WEIGHTS output/shapes/model_final.pth TEST.AUG.MIN_SIZES "(128, 96, 160)"
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.checkpoint import load_weights  # noqa: E402
from mask2former.config import get_cfg  # noqa: E402
from mask2former.data import build_detection_test_loader  # noqa: E402
from mask2former.modeling import build_model  # noqa: E402
from mask2former.modeling.test_time_augmentation import build_tta_model, query_agreement  # noqa: E402


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="config of the model")
    parser.add_argument("--dataset", help="dataset to measure on (default: DATASETS.TEST[0])")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5, help="detection threshold (default: 0.5)"
    )
    parser.add_argument("--num-images", type=int, default=0, help="images to use, 0 for all (default: 0)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    tta = build_tta_model(cfg, model)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    rows = []
    for i, batch in enumerate(build_detection_test_loader(cfg, dataset)):
        if args.num_images and i >= args.num_images:
            break
        for x in batch:
            rows.append(query_agreement(model, tta, x, args.score_threshold))
    rows = [r for r in rows if r["queries"] > 0]
    total = sum(r["queries"] for r in rows)
    summary = {
        k: sum(r[k] * r["queries"] for r in rows) / max(total, 1)
        for k in ("same_query_iou", "same_class", "best_iou")
    }
    views = len(tta.views(torch.zeros(3, 8, 8, dtype=torch.uint8), (8, 8)))
    print(
        f"{dataset}: {len(rows)} images, {total} detecting queries, {views} views ({list(tta.min_sizes)}, flip {tta.flip})"
    )
    print(f"  mean IoU with the same query in the other views:   {summary['same_query_iou']:.3f}")
    print(f"  same best class in the other views:                 {summary['same_class']:.3f}")
    print(f"  mean IoU with the best-matching query (upper bound): {summary['best_iou']:.3f}")
    return {k: (v if not math.isnan(v) else 0.0) for k, v in summary.items()}


if __name__ == "__main__":
    main()
