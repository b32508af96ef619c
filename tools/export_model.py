#!/usr/bin/env python
"""Export a Mask2Former network to a `torch.export` program (`model.pt2`) and/or ONNX (`model.onnx`),
then check both against the eager model.

    python tools/export_model.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --weights model_final.pkl --height 512 --width 768 \
        --format torch_export,onnx --output export/ [KEY VALUE ...]

The exported network takes images [B, 3, H, W] (float pixel values in INPUT.FORMAT channel order,
not normalised; H, W are padded up to the size divisibility inside) and returns
(pred_logits [B, Q, K+1], pred_masks [B, Q, Hp/4, Wp/4]). Shapes are static: export once per input
size and batch size. Post-processing stays in Python (`mask2former.inference.export.postprocess_exported`).

`--weights` is the trained model to export; the config's MODEL.WEIGHTS (a training initialisation)
is not loaded. Without `--weights` the network has random weights (for trying the tool out).
When the weights file carries its training set's metadata (checkpoints this project writes do),
the model is built with its classes (which are things) and the metadata is written beside the
exports as `metadata.json` (class names, colours, id maps; JSON turns int dict keys into strings);
otherwise `metadata.json` holds the config's DATASETS.TRAIN[0] metadata.

Check: eager, the saved-and-reloaded torch.export program and onnxruntime (CPUExecutionProvider) run
on a random image and a structured one (flat regions, edges, a gradient). For each output the max
abs difference to eager must be at most TOL * max(1, max |eager output|) (`--tolerance`, default
1e-3); otherwise the tool exits with status 1. Loading `model.pt2` needs the deformable-attention
op registered: use `mask2former.inference.export.load_exported_program` (or `load_extension()` then
`torch.export.load`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

from mask2former.checkpoint import dataset_metadata, load_weights, read_checkpoint_metadata
from mask2former.config import get_cfg
from mask2former.inference.export import (
    MIN_ONNX_OPSET,
    ExportableMaskFormer,
    export_onnx,
    export_torch,
    load_exported_program,
    max_abs_differences,
    run_onnx,
)
from mask2former.inference.predictor import use_checkpoint_metadata
from mask2former.modeling import build_model

FORMATS = ("torch_export", "onnx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="trained weights to export (.pkl / .pth); random if omitted")
    p.add_argument("--height", type=int, required=True, help="input height H of the exported network")
    p.add_argument("--width", type=int, required=True, help="input width W of the exported network")
    p.add_argument("--batch-size", type=int, default=1, help="batch size B of the exported network")
    p.add_argument("--format", default="torch_export,onnx", help=f"comma-separated, from {FORMATS}")
    p.add_argument("--output", required=True, help="folder for model.pt2 / model.onnx")
    p.add_argument("--opset", type=int, default=MIN_ONNX_OPSET, help=f"ONNX opset (>= {MIN_ONNX_OPSET})")
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="relative tolerance of the check (see above)"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in args.formats if f not in FORMATS]
    if unknown or not args.formats:
        p.error(f"--format: unknown {unknown}, choose from {FORMATS}")
    if min(args.height, args.width, args.batch_size) < 1:
        p.error("--height, --width and --batch-size must be positive")
    return args


def sample_images(batch: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Two test batches [B, 3, H, W] of pixel values in [0, 255]: uniform noise, and a structured
    scene (horizontal gradient background, two flat rectangles, a disk)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(batch, 3, height, width, generator=gen) * 255
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    scene = torch.stack([xs.expand(height, width) / max(width - 1, 1) * 200 + 20] * 3)  # [3, H, W]
    scene[:, height // 8 : height // 2, width // 8 : width // 2] = torch.tensor([220.0, 40, 40]).view(3, 1, 1)
    scene[:, height // 2 :, width // 2 : width * 7 // 8] = torch.tensor([30.0, 160, 60]).view(3, 1, 1)
    disk = (ys - height * 0.7) ** 2 + (xs - width * 0.25) ** 2 < (min(height, width) * 0.2) ** 2
    scene[:, disk] = torch.tensor([40.0, 60, 230]).view(3, 1)
    return {"random": noise.to(device), "structured": scene.expand(batch, -1, -1, -1).contiguous().to(device)}


def check(name: str, expected, actual, tolerance: float) -> bool:
    """Print the differences of one run against eager; True when all are within tolerance."""
    ok = True
    for output, (diff, scale) in max_abs_differences(expected, actual).items():
        limit = tolerance * max(1.0, scale)
        passed = diff <= limit
        ok &= passed
        print(
            f"  {name:<22} {output:<12} max|diff| {diff:.3e}  (max|eager| {scale:.3e}, limit {limit:.3e}) "
            f"{'ok' if passed else 'FAIL'}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(args.opts)
    cfg.MODEL.COMPILE = False  # export traces the eager modules
    if use_checkpoint_metadata(cfg, args.weights) is not None:
        metadata = read_checkpoint_metadata(args.weights)
    else:
        metadata = dataset_metadata(cfg)
    model = build_model(cfg).eval()
    if args.weights:
        report = load_weights(model, args.weights)
        print(f"loaded {args.weights}: {report}")
        for key, file_shape, model_shape in report.mismatched:
            if key.endswith("class_embed.weight"):
                raise SystemExit(
                    f"{args.weights} predicts {file_shape[0] - 1} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is "
                    f"{model_shape[0] - 1}: the exported class head would be random"
                )
    else:
        print("no --weights: exporting random weights")
    wrapper = ExportableMaskFormer(model)
    os.makedirs(args.output, exist_ok=True)
    if metadata is not None:
        with open(os.path.join(args.output, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=1)
        print(
            f"wrote {os.path.join(args.output, 'metadata.json')} (dataset {metadata.get('dataset_name')!r})"
        )
    example = sample_images(args.batch_size, args.height, args.width, model.device)["random"]

    paths = {}
    if "torch_export" in args.formats:
        start = time.perf_counter()
        paths["torch_export"] = os.path.join(args.output, "model.pt2")
        _, impl = export_torch(wrapper, example, paths["torch_export"])
        print(
            f"wrote {paths['torch_export']} ({time.perf_counter() - start:.1f} s; deformable attention: {impl})"
        )
    if "onnx" in args.formats:
        start = time.perf_counter()
        paths["onnx"] = os.path.join(args.output, "model.onnx")
        export_onnx(wrapper, example, paths["onnx"], opset=args.opset)
        print(f"wrote {paths['onnx']} (opset {args.opset}, {time.perf_counter() - start:.1f} s)")

    program = load_exported_program(paths["torch_export"]).module() if "torch_export" in paths else None
    ok = True
    for sample, images in sample_images(args.batch_size, args.height, args.width, model.device).items():
        print(f"{sample} images {tuple(images.shape)}:")
        with torch.no_grad():
            expected = wrapper(images)
            if program is not None:
                ok &= check("torch.export (reloaded)", expected, program(images), args.tolerance)
        if "onnx" in paths:
            ok &= check("onnxruntime (CPU)", expected, run_onnx(paths["onnx"], images), args.tolerance)
    print("all outputs within tolerance" if ok else "some outputs differ from eager beyond the tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
