#!/usr/bin/env python
"""The out-of-the-box run (`make demo`): generate the bundled shapes dataset, train Mask2Former on
it on the CPU with tools/train_net.py, evaluate on its val split (PQ, AP, mIoU) and draw the
predictions of a few val images.

    python tools/main_job.py                                   # everything, about 5 minutes on 2 CPU cores
    python tools/main_job.py --skip-training                   # evaluate + draw OUTPUT_DIR/model_final.pth
    python tools/main_job.py SOLVER.MAX_ITER 100               # config overrides go to train_net

Outputs go to OUTPUT_DIR (output/shapes): model_final.pth, log.txt, metrics.json,
inference/ (evaluation files) and vis/{panoptic,instance,semantic}/ (drawn val images).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_shapes.yaml")
METRICS = (("panoptic_seg", ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")), ("segm", ("AP", "AP50", "AP75")),
           ("sem_seg", ("mIoU", "fwIoU", "mACC", "pACC")))  # fmt: skip


def _load_tool(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_final_metrics(metrics_json: str) -> dict[str, float]:
    """The evaluation scalars ("panoptic_seg/PQ", ...) of the last line of metrics.json that has them."""
    if not os.path.isfile(metrics_json):
        raise FileNotFoundError(f"{metrics_json} not found: training wrote no metrics")
    found: dict[str, float] = {}
    with open(metrics_json) as f:
        for line in f:
            row = json.loads(line)
            if "panoptic_seg/PQ" in row:
                found = {k: v for k, v in row.items() if "/" in k}
    if not found:
        raise RuntimeError(f"{metrics_json} holds no evaluation results (was DATASETS.TEST empty?)")
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=CONFIG, help="config to train (default: %(default)s)")
    parser.add_argument(
        "--output-dir", default=os.path.join("output", "shapes"), help="OUTPUT_DIR of the run"
    )
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate and draw the existing model_final.pth"
    )
    parser.add_argument("--num-vis", type=int, default=8, help="val images to draw (0: none)")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=1,
        help="CPU threads of PyTorch (default 1: this model's tensors are small, and one thread per core is "
        "as fast without the slow-down of threads waiting on each other when the machine is busy)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE pairs) for train_net"
    )
    args = parser.parse_args(argv)
    if args.num_vis < 0:
        parser.error(f"--num-vis must be 0 or more, got {args.num_vis}")
    torch.set_num_threads(args.num_threads)
    train_net = _load_tool("train_net", os.path.join(REPO, "tools", "train_net.py"))
    prepare = _load_tool("prepare_shapes_dataset", os.path.join(REPO, "tools", "prepare_shapes_dataset.py"))
    demo = _load_tool("demo", os.path.join(REPO, "demo", "demo.py"))

    times = {}
    start = time.perf_counter()
    root = prepare.main([])  # $DETECTRON2_DATASETS/shapes, where the builtin registration looks
    times["dataset"] = time.perf_counter() - start

    common = ["--config-file", args.config_file]
    overrides = ["OUTPUT_DIR", args.output_dir, *args.opts]
    weights = os.path.join(args.output_dir, "model_final.pth")
    t = time.perf_counter()
    if args.skip_training:
        parser = train_net.default_argument_parser()
        results = train_net.main(
            parser.parse_args([*common, "--eval-only", *overrides, "MODEL.WEIGHTS", weights])
        )
        metrics = {f"{task}/{k}": v for task, res in results.items() for k, v in res.items()}
        times["eval"] = time.perf_counter() - t
    else:
        train_net.cli([*common, *overrides])  # evaluates DATASETS.TEST after the last iteration
        times["train+eval"] = time.perf_counter() - t
        metrics = read_final_metrics(os.path.join(args.output_dir, "metrics.json"))

    t = time.perf_counter()
    val_images = sorted(os.listdir(os.path.join(root, "val")))[: args.num_vis]
    inputs = [os.path.join(root, "val", f) for f in val_images]
    vis_dirs = {}
    for task in ("panoptic", "instance", "semantic") if inputs else ():
        vis_dirs[task] = os.path.join(args.output_dir, "vis", task)
        demo.main([*common, "--input", *inputs, "--output", vis_dirs[task], "--task", task, "--scale", "4",
                   "--confidence-threshold", "0.5", "--opts", *overrides, "MODEL.WEIGHTS", weights])  # fmt: skip
    times["visualisation"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - start

    print("\n==== Mask2Former on the bundled shapes dataset (val split) ====")
    for task, keys in METRICS:
        print(
            f"{task:13s}"
            + "  ".join(f"{k} {metrics[f'{task}/{k}']:.1f}" for k in keys if f"{task}/{k}" in metrics)
        )
    print("time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"weights: {weights}")
    for task, folder in vis_dirs.items():
        print(f"{task} drawings: {folder}/ (e.g. {os.path.join(folder, val_images[0])})")
    return {"metrics": metrics, "times": times, "vis": vis_dirs}


if __name__ == "__main__":
    main()
