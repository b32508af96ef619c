#!/usr/bin/env python
"""Convert an official ImageNet Swin Transformer checkpoint to this project's backbone weights.

    python tools/convert_swin.py swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl
    python tools/train_net.py --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \\
        MODEL.WEIGHTS swin_tiny_patch4_window7_224.pkl

Input: the official release (`{"model": {...}}` with `patch_embed.proj.weight`,
`layers.0.blocks.0.attn.qkv.weight`, ..., `norm.weight`, `head.weight`; a bare state dict works
too). timm's layout of the same weights (each PatchMerging at the start of the next stage,
`layers.1.downsample` for the official `layers.0.downsample`) is recognised and renumbered.

Output: a Detectron2-style pickle `{"model": {name: numpy array}, "__author__": ...,
"matching_heuristics": True}` named as the D2SwinTransformer backbone. The classifier `head.*`
and the final `norm.*` are dropped, as are the classification model's fixed-resolution
`attn_mask` buffers (the backbone computes them for each input). The per-stage output norms
`norm0..norm3` are new and stay randomly initialised, as in the original. The tool prints the
MODEL.SWIN settings the file's shapes imply.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import numpy as np
import torch

from mask2former.checkpoint import load_state_dict_file, write_state_dict

_DROPPED = re.compile(r"(head\..*|norm\.(weight|bias)|layers\.\d+\.blocks\.\d+\.attn_mask)")
_KNOWN = re.compile(
    r"patch_embed\.(proj|norm)\.(weight|bias)"
    r"|absolute_pos_embed"
    r"|layers\.\d+\.blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\.attn\.(relative_position_bias_table|relative_position_index)"
    r"|layers\.\d+\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)"
)


def _from_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keeps stage i's PatchMerging as `layers.{i}.downsample` at the start of stage i;
    the original keeps it at the end of stage i-1."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    return out


def convert(state: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, np.ndarray]:
    """Official Swin state dict -> {backbone name: numpy array} (see the module doc)."""
    if (
        "layers.0.downsample.reduction.weight" not in state
        and "layers.1.downsample.reduction.weight" in state
    ):
        state = _from_timm_layout(state)
    out = {}
    for name, value in state.items():
        if _DROPPED.fullmatch(name):
            continue
        if not _KNOWN.fullmatch(name):
            raise ValueError(f"{source}: {name!r} is not a Swin Transformer weight name")
        array = value.detach().cpu().numpy()
        out[name] = array if array.dtype == np.int64 else array.astype(np.float32)
    if "patch_embed.proj.weight" not in out:
        raise ValueError(f"{source}: no patch_embed.proj.weight; is this a Swin Transformer checkpoint?")
    return out


def infer_swin_config(model: dict[str, np.ndarray]) -> dict[str, object]:
    """MODEL.SWIN settings implied by the weights' shapes: EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE,
    PATCH_SIZE, APE."""
    proj = model["patch_embed.proj.weight"]  # [embed_dim, 3, p, p]
    depths, heads = [], []
    for i in range(4):
        blocks = {int(m.group(1)) for k in model if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        heads.append(int(model[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]))
    table_rows = model["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]  # (2w - 1)^2
    return {
        "EMBED_DIM": int(proj.shape[0]),
        "DEPTHS": depths,
        "NUM_HEADS": heads,
        "WINDOW_SIZE": (math.isqrt(table_rows) + 1) // 2,
        "PATCH_SIZE": int(proj.shape[-1]),
        "APE": "absolute_pos_embed" in model,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official Swin weights (.pth)")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error(f"output {args.output!r} must end in .pkl")
    model = convert(load_state_dict_file(args.input), args.input)
    write_state_dict(model, args.output, author="microsoft/Swin-Transformer", matching_heuristics=True)
    print(f"wrote {len(model)} arrays to {args.output}; the weights imply:")
    for key, value in infer_swin_config(model).items():
        print(f"  MODEL.SWIN.{key} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
