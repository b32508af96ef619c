"""Model building: registries, `build_model(cfg)`, and the components models built on
Mask2Former reuse (listed in docs/EXTENDING.md; the names in `__all__` are the stable import paths).

Importing this package registers the builtin components (ResNet and Swin backbones, the
MSDeformAttn pixel decoder, the masked-attention Transformer decoder, MaskFormerHead, MaskFormer).
"""

import torch

from ..config import CfgNode
from .backbone import Backbone, D2SwinTransformer, ResNet, build_resnet_backbone
from .criterion import MatchedPairs, SetCriterion, build_criterion, dice_loss, sigmoid_ce_loss
from .head import MaskFormerHead, build_maskformer_head
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer, build_maskformer
from .pixel_decoder import MSDeformAttn, MSDeformAttnPixelDecoder, build_msdeformattn_pixel_decoder
from .point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from .registry import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PIXEL_DECODER_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    TRANSFORMER_DECODER_REGISTRY,
    Registry,
)
from .transformer_decoder import MultiScaleMaskedTransformerDecoder, build_masked_transformer_decoder


def resolve_device(name: str) -> torch.device:
    """MODEL.DEVICE -> torch.device, with a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is {name!r} but PyTorch sees no CUDA device; add `MODEL.DEVICE cpu` to run on the CPU"
        )
    return device


def build_model(cfg: CfgNode) -> torch.nn.Module:
    """The model named by MODEL.META_ARCHITECTURE, with random weights, on MODEL.DEVICE (on the CPU,
    the process's allocator keeps freed memory for reuse: `utils.cpu_memory`).
    Load weights with `mask2former.checkpoint.load_weights(model, cfg.MODEL.WEIGHTS)`."""
    from ..config.key_support import check_supported

    check_supported(cfg)  # also for values set in Python after loading
    device = resolve_device(cfg.MODEL.DEVICE)
    if device.type == "cpu":
        from ..utils.cpu_memory import keep_freed_cpu_memory

        keep_freed_cpu_memory()
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).to(device)
    if cfg.MODEL.COMPILE:
        # In place, so parameter names (and checkpoints) stay those of the eager model.
        model.backbone.compile()
        model.sem_seg_head.compile()
    return model


__all__ = [
    "BACKBONE_REGISTRY",
    "META_ARCH_REGISTRY",
    "PIXEL_DECODER_REGISTRY",
    "SEM_SEG_HEADS_REGISTRY",
    "TRANSFORMER_DECODER_REGISTRY",
    "Backbone",
    "D2SwinTransformer",
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "MaskFormer",
    "MaskFormerHead",
    "MatchedPairs",
    "MultiScaleMaskedTransformerDecoder",
    "Registry",
    "ResNet",
    "SetCriterion",
    "build_criterion",
    "build_masked_transformer_decoder",
    "build_maskformer",
    "build_maskformer_head",
    "build_model",
    "build_msdeformattn_pixel_decoder",
    "build_resnet_backbone",
    "calculate_uncertainty",
    "dice_loss",
    "get_uncertain_point_coords_with_randomness",
    "point_sample",
    "resolve_device",
    "sigmoid_ce_loss",
]
