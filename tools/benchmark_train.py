#!/usr/bin/env python
"""Training-step benchmark: time per step (ms) and peak memory per image for a config, batch
size and image size, with synthetic inputs (random images, a few random rectangular instances
per image), on CPU or GPU, with AMP off, float16 or bfloat16.

    python tools/benchmark_train.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --batch-size 2 --image-size 1024 1024 --amp float16
    python tools/benchmark_train.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \
        --batch-size 1 --image-size 256 256 --iters 3 MODEL.DEVICE cpu

The step measured is `Trainer.run_step` itself (forward, loss reduction, backward, gradient
clipping, optimizer step). Peak memory is CUDA's max allocated on GPU and the process's peak
resident set size on CPU (which includes the Python process itself).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time

import torch

from mask2former.config import get_cfg
from mask2former.engine.defaults import seed_all_rng
from mask2former.engine.hooks import HookBase
from mask2former.engine.trainer import Trainer
from mask2former.structures import Instances


def synthetic_batch(batch_size: int, height: int, width: int, num_classes: int, generator: torch.Generator):
    """Random uint8 images [3, H, W] with 1-4 rectangular instances of random classes each."""
    batch = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        masks = torch.zeros(n, height, width, dtype=torch.bool)
        for i in range(n):
            y0 = int(torch.randint(0, height // 2, (1,), generator=generator))
            x0 = int(torch.randint(0, width // 2, (1,), generator=generator))
            masks[i, y0 : y0 + height // 3, x0 : x0 + width // 3] = True
        classes = torch.randint(0, num_classes, (n,), generator=generator)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        instances = Instances((height, width), gt_classes=classes, gt_masks=masks)
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


class _StepTimer(HookBase):
    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before_step(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def after_step(self) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step")
    parser.add_argument("--image-size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    parser.add_argument("--amp", choices=("off", "float16", "bfloat16"), default="off")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--iters", type=int, default=10, help="timed steps")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    amp = {"SOLVER.AMP.ENABLED": args.amp != "off"}
    if args.amp != "off":
        amp["SOLVER.AMP.PRECISION"] = args.amp
    output_dir = tempfile.mkdtemp(prefix="benchmark_train_")
    cfg.merge_from_list(
        [
            *[x for kv in amp.items() for x in kv],
            "SOLVER.IMS_PER_BATCH", args.batch_size,
            "SOLVER.MAX_ITER", args.warmup + args.iters,
            "OUTPUT_DIR", output_dir,
            # inference switches do not change the training step; panoptic/instance need dataset metadata
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", False,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON", False,
            "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", True,
        ]
    )  # fmt: skip
    cfg.freeze()
    seed_all_rng(0)
    device = torch.device(cfg.MODEL.DEVICE)
    h, w = args.image_size
    g = torch.Generator().manual_seed(0)
    batches = [
        synthetic_batch(args.batch_size, h, w, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, g) for _ in range(2)
    ]
    timer = _StepTimer(device)

    class BenchmarkTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return (batches[i % len(batches)] for i in range(cfg.SOLVER.MAX_ITER))

        def build_hooks(self):
            return [timer]

    trainer = BenchmarkTrainer(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()

    step_ms = statistics.median(timer.times[args.warmup :]) * 1000
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 1024**2
        peak_kind = "CUDA max allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_kind = "process peak RSS"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.config_file} on {name}: batch {args.batch_size} x {h}x{w}, AMP {args.amp}\n"
        f"step time (median of {args.iters}): {step_ms:.1f} ms ({step_ms / args.batch_size:.1f} ms/image)\n"
        f"peak memory ({peak_kind}): {peak_mib:.0f} MiB, {peak_mib / args.batch_size:.0f} MiB/image"
    )
    return {"step_ms": step_ms, "peak_mib": peak_mib, "peak_mib_per_image": peak_mib / args.batch_size}


if __name__ == "__main__":
    main(sys.argv[1:])
