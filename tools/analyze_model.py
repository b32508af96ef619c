#!/usr/bin/env python
r"""Analyse a model: FLOPs, parameters, activations or structure (the tool Detectron2 and the original ship).

    python tools/analyze_model.py --tasks flop parameter \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --height 800 --width 1216 [KEY VALUE ...]

Tasks:
    flop        FLOPs per module (fvcore's FlopCountAnalysis; one fused multiply-add is one FLOP), counted
                on --num-inputs inputs of --height x --width: random pixels, or the image --input resized
                to that size. The deformable-attention op and scaled-dot-product attention have their own
                counting handles (mask2former/utils/flop_count.py). The traced part is backbone + head
                (pixel decoder and Transformer decoder) on the padded image; post-processing is not counted.
    activation  output elements of the counted ops per module (fvcore's ActivationCountAnalysis), same inputs.
    parameter   parameters per module, as a table down to --max-depth.
    structure   the module tree (print(model)).
Weights do not change FLOPs or parameter counts; `--weights` loads them for completeness (random otherwise).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

TASKS = ("flop", "activation", "parameter", "structure")
logger = logging.getLogger("analyze_model")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
    )
    p.add_argument("--config-file", required=True, help="model config (YAML)")
    p.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=["flop"], help="what to report (default: flop)"
    )
    p.add_argument("--height", type=int, default=800, help="input height in pixels (default: 800)")
    p.add_argument("--width", type=int, default=1216, help="input width in pixels (default: 1216)")
    p.add_argument("--num-inputs", type=int, default=1, help="images per forward pass (default: 1)")
    p.add_argument(
        "--input", default="", help="an image file resized to the input size (default: random pixels)"
    )
    p.add_argument("--weights", default="", help="weights to load (default: none, random weights)")
    p.add_argument("--device", default="cpu", help="device the model is built on (default: cpu)")
    p.add_argument("--max-depth", type=int, default=3, help="depth of the module tables (default: 3)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if min(args.height, args.width, args.num_inputs) < 1:
        p.error("--height, --width and --num-inputs must be positive")
    return args


def build(args: argparse.Namespace) -> torch.nn.Module:
    from mask2former.checkpoint import load_weights
    from mask2former.config import get_cfg
    from mask2former.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.COMPILE = False  # tracing runs the eager modules
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        load_weights(model, args.weights)
    return model


def inputs(args: argparse.Namespace) -> list[torch.Tensor]:
    """--num-inputs uint8 images [3, H, W]: the --input file resized, or random pixels."""
    if not args.input:
        gen = torch.Generator().manual_seed(0)
        return [
            torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=gen)
            for _ in range(args.num_inputs)
        ]
    import torch.nn.functional as F

    from mask2former.data.detection_utils import read_image

    image = torch.from_numpy(read_image(args.input, "RGB").copy()).permute(2, 0, 1).float()
    resized = F.interpolate(image[None], size=(args.height, args.width), mode="bilinear", align_corners=False)
    return [resized[0].round().clamp(0, 255).to(torch.uint8)] * args.num_inputs


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fvcore.nn import flop_count_table, parameter_count_table

    from mask2former.utils.flop_count import model_activation_analysis, model_flop_analysis

    model = build(args)
    size = f"{args.num_inputs} x {args.height}x{args.width}"
    for task in args.tasks:
        if task == "flop":
            analysis = model_flop_analysis(model, inputs(args))
            print(f"FLOPs of backbone + head for {size} (one fused multiply-add = one FLOP):")
            print(flop_count_table(analysis, max_depth=args.max_depth))
            print(
                f"Total: {analysis.total() / 1e9:.2f} GFLOPs ({analysis.total() / 1e9 / args.num_inputs:.2f} per image)"
            )
        elif task == "activation":
            analysis = model_activation_analysis(model, inputs(args))
            print(f"Activations (output elements of counted ops) of backbone + head for {size}:")
            table = flop_count_table(analysis, max_depth=args.max_depth, show_param_shapes=False)
            print(table.replace("#flops", "#activations"))
            print(f"Total: {analysis.total() / 1e6:.1f} M activations")
        elif task == "parameter":
            print("Parameters per module:")
            print(parameter_count_table(model, max_depth=args.max_depth))
            print(f"Total: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
        else:
            print(model)


if __name__ == "__main__":
    sys.exit(main())
