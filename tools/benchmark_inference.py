#!/usr/bin/env python
"""Inference latency per image, split into backbone, head (pixel decoder + Transformer decoder)
and post-processing, for a config and image size, on CPU or GPU, with random weights.

    python tools/benchmark_inference.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --height 512 --width 768 --device cpu

Prints milliseconds per image (median over --iters timed runs after --warmup runs) and images
per second. Precision and compilation are config keys: append `MODEL.INFERENCE_DTYPE bfloat16`
or `MODEL.COMPILE True`; `--batch-size N` times N images per forward pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mask2former.config import get_cfg
from mask2former.modeling import build_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1216)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random weights (they decide how many segments survive)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args()


class Stopwatch:
    """Wall-clock sections; synchronises CUDA around each so device time is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, list[float]] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, name: str, fn, *args):
        self.sync()
        start = time.perf_counter()
        out = fn(*args)
        self.sync()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    device = model.device
    inputs = [
        {"image": torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)}
        for _ in range(args.batch_size)
    ]
    watch = Stopwatch(device)
    low_precision = model.inference_dtype != torch.float32
    autocast = torch.autocast(device.type, dtype=model.inference_dtype, enabled=low_precision)
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            if i == args.warmup:
                watch.times.clear()
            start = time.perf_counter()
            images = watch.run("preprocess", model.preprocess_image, inputs)
            with autocast:  # as MaskFormer.forward runs backbone and head
                features = watch.run("backbone", model.backbone, images.tensor)
                outputs = watch.run("head", model.sem_seg_head, features)
            watch.run("postprocess", model.postprocess, outputs, inputs, images)
            watch.sync()
            watch.times.setdefault("total", []).append(time.perf_counter() - start)
    tasks = [
        t
        for t, on in (
            ("semantic", model.semantic_on),
            ("panoptic", model.panoptic_on),
            ("instance", model.instance_on),
        )
        if on
    ]
    print(
        f"{args.config_file}: {args.batch_size} x {args.height}x{args.width}, device {device}, "
        f"threads {torch.get_num_threads()}, {model.inference_dtype}, outputs {'+'.join(tasks)}, {args.iters} timed runs"
    )
    for name, values in watch.times.items():
        ms = statistics.median(values) * 1000 / args.batch_size
        print(f"  {name:<12} {ms:9.1f} ms/image")
    print(
        f"  throughput   {1000 / (statistics.median(watch.times['total']) * 1000 / args.batch_size):9.2f} images/s"
    )


if __name__ == "__main__":
    main()
