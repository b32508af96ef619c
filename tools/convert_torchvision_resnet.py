#!/usr/bin/env python
"""Convert torchvision's ImageNet ResNet weights to this project's (Detectron2's) backbone names.

    python tools/convert_torchvision_resnet.py resnet50-0676ba61.pth R-50.pkl
    python tools/train_net.py --config-file configs/.../maskformer2_R50_bs16_50ep.yaml MODEL.WEIGHTS R-50.pkl

Input: a torchvision state dict (`resnet50-*.pth`, `resnet101-*.pth`, ...; `{"model": ...}` and
`{"state_dict": ...}` wrappers are accepted). Output: a Detectron2-style pickle
`{"model": {name: numpy array}, "__author__": "torchvision", "matching_heuristics": True}` with

    conv1 / bn1                        -> stem.conv1 / stem.conv1.norm
    layer{L}.{b}.conv{k} / .bn{k}      -> res{L+1}.{b}.conv{k} / .conv{k}.norm
    layer{L}.{b}.downsample.0 / .1     -> res{L+1}.{b}.shortcut / .shortcut.norm

The classifier (`fc.*`) and BatchNorm's `num_batches_tracked` counters are dropped. torchvision's
bottleneck puts the stride in the 3x3 convolution, so use MODEL.RESNETS.STRIDE_IN_1X1 False (as
the original's configs do).
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
import torch

from mask2former.checkpoint import load_state_dict_file, write_state_dict

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def convert_name(name: str) -> str | None:
    """torchvision ResNet name -> Detectron2 name; None for entries that are dropped."""
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
        return None
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if m := re.fullmatch(r"bn1\.(\w+)", name):
        return f"stem.conv1.norm.{m.group(1)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.conv(\d)\.weight", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.weight"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.norm.{m.group(4)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.0\.weight", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.weight"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.norm.{m.group(3)}"
    raise ValueError(f"not a torchvision ResNet weight name: {name!r}")


def convert(state: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, np.ndarray]:
    """torchvision ResNet state dict -> {Detectron2 name: float32 numpy array}."""
    out = {}
    for name, value in state.items():
        try:
            new = convert_name(name)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        if new is None:
            continue
        if new.rsplit(".", 1)[-1] not in ("weight", *_BN_FIELDS):
            raise ValueError(f"{source}: unexpected entry {name!r}")
        out[new] = value.detach().cpu().float().numpy()
    if "stem.conv1.weight" not in out:
        raise ValueError(f"{source}: no conv1.weight; is this a torchvision ResNet state dict?")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision ResNet weights (.pth)")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error(f"output {args.output!r} must end in .pkl")
    model = convert(load_state_dict_file(args.input), args.input)
    write_state_dict(model, args.output, author="torchvision", matching_heuristics=True)
    blocks = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in model if k.startswith("res")})
    print(f"wrote {len(model)} arrays ({len(blocks)} residual blocks) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
