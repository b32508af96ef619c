"""FLOPs of a model's backbone and head at a given input size, counted by fvcore's `FlopCountAnalysis`.

fvcore traces the model with `torch.jit.trace` and counts each traced op with a handle; as in
fvcore and Detectron2, one fused multiply-add counts as one FLOP. This module adds handles for the
ops fvcore does not know:
    mask2former::ms_deform_attn   5 per sampled value and channel (4 bilinear corners + the attention
                                  weight): B * Q * M * L * P * D * 5
    aten::scaled_dot_product_attention   the two matmuls, q k^T and attn v: 2 * B * M * Q * K * D
Shape-only ops (view, copy, indexing) and element-wise ops are not counted, as in fvcore.

The traced part is what `MaskFormer` runs under autocast: backbone + head (pixel decoder and
Transformer decoder) on the normalised, padded images; post-processing is not counted (it is not
traceable: panoptic inference numbers segments on the host).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..modeling.meta_arch import MaskFormer

__all__ = [
    "BackboneAndHead",
    "model_activation_analysis",
    "model_flop_analysis",
    "msda_flop_jit",
    "output_numel_jit",
    "sdpa_flop_jit",
]


def msda_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """mask2former::ms_deform_attn(value [B, S, M, D], shapes, starts, locations [B, Q, M, L, P, 2],
    weights [B, Q, M, L, P]) -> [B, Q, M * D]: 5 FLOPs per sampled value and channel."""
    b, _, m, d = get_shape(inputs[0])
    _, q, _, levels, points, _ = get_shape(inputs[3])
    return b * q * m * levels * points * d * 5


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention(q [..., Q, D], k [..., K, D], v [..., K, Dv]): q k^T and attn v."""
    q_shape, k_shape, v_shape = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q_shape[:-2]:
        batch *= s
    num_q, d = q_shape[-2:]
    num_k, dv = k_shape[-2], v_shape[-1]
    return batch * num_q * num_k * (d + dv)


def output_numel_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Activation count of an op: the elements of its (first) output."""
    n = 1
    for s in get_shape(outputs[0]):
        n *= s
    return n


class BackboneAndHead(nn.Module):
    """The traced part of a MaskFormer: images [B, 3, H, W] -> (pred_logits [B, Q, K+1],
    pred_masks [B, Q, H/4, W/4]); submodule names are the model's (`backbone`, `sem_seg_head`)."""

    def __init__(self, model: MaskFormer):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.sem_seg_head(self.backbone(images))
        return out["pred_logits"], out["pred_masks"]


def _padded_images(model: MaskFormer, images: Iterable[Tensor]) -> Tensor:
    if model.training:
        raise ValueError("FLOP and activation analysis: put the model in eval mode first (model.eval())")
    with torch.no_grad():
        return model.preprocess_image([{"image": img} for img in images]).tensor


def model_flop_analysis(model: MaskFormer, images: Iterable[Tensor]) -> FlopCountAnalysis:
    """fvcore's analysis of `model`'s backbone + head on `images` (uint8 [3, H, W] each, as the model
    takes them): `.total()`, `.by_module()`, `.by_operator()`, `.unsupported_ops()`.

    The model must be in eval mode and uncompiled (tracing runs the eager modules)."""
    analysis = FlopCountAnalysis(BackboneAndHead(model), (_padded_images(model, images),))
    analysis.set_op_handle(
        "mask2former::ms_deform_attn", msda_flop_jit, "aten::scaled_dot_product_attention", sdpa_flop_jit
    )
    # Shape-only and element-wise ops are not counted (fvcore's convention); do not warn about them.
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def model_activation_analysis(model: MaskFormer, images: Iterable[Tensor]) -> ActivationCountAnalysis:
    """fvcore's activation count (output elements of convolutions, matmuls and the attention ops) of
    `model`'s backbone + head on `images`, as `model_flop_analysis`."""
    analysis = ActivationCountAnalysis(BackboneAndHead(model), (_padded_images(model, images),))
    analysis.set_op_handle(
        "mask2former::ms_deform_attn",
        output_numel_jit,
        "aten::scaled_dot_product_attention",
        output_numel_jit,
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis
