"""`MaskFormerHead`: pixel decoder + Transformer decoder, chosen by name from the config."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from ..config import CfgNode
from ..layers import ShapeSpec
from .registry import PIXEL_DECODER_REGISTRY, SEM_SEG_HEADS_REGISTRY, TRANSFORMER_DECODER_REGISTRY


class PixelDecoder(Protocol):
    """What MaskFormerHead needs of a pixel decoder (an nn.Module from PIXEL_DECODER_REGISTRY)."""

    def forward_features(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """backbone features -> (mask features [B, mask_dim, H/4, W/4], coarsest encoder output,
        multi-scale features coarse to fine for the Transformer decoder)"""
        ...


class MaskFormerHead(nn.Module):
    """Backbone features -> {"pred_logits", "pred_masks", "aux_outputs"}."""

    pixel_decoder: PixelDecoder

    def __init__(self, pixel_decoder: PixelDecoder, predictor: nn.Module):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        """Pixel decoder by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME, Transformer decoder by
        MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME (fed the pixel decoder's multi-scale features)."""
        head = cfg.MODEL.SEM_SEG_HEAD
        if cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE != "multi_scale_pixel_decoder":
            raise ValueError(
                "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be 'multi_scale_pixel_decoder' for Mask2Former, "
                f"got {cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE!r}"
            )
        pixel_decoder = PIXEL_DECODER_REGISTRY.get(head.PIXEL_DECODER_NAME)(cfg, input_shape)
        predictor = TRANSFORMER_DECODER_REGISTRY.get(cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME)(
            cfg, head.CONVS_DIM, True
        )
        return {"pixel_decoder": pixel_decoder, "predictor": predictor}

    def forward(self, features: dict[str, Tensor]) -> dict:
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)


@SEM_SEG_HEADS_REGISTRY.register("MaskFormerHead")
def build_maskformer_head(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> MaskFormerHead:
    """MaskFormerHead from the config (see `MaskFormerHead.from_config`)."""
    return MaskFormerHead(**MaskFormerHead.from_config(cfg, input_shape))
