"""Model building: registries and `build_model(cfg)`.

Importing this package registers the builtin components (ResNet and Swin backbones, the
MSDeformAttn pixel decoder, the masked-attention Transformer decoder, MaskFormerHead, MaskFormer).
"""

import torch

from . import backbone, head, meta_arch, pixel_decoder, transformer_decoder  # noqa: F401  (registration)
from .registry import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PIXEL_DECODER_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    TRANSFORMER_DECODER_REGISTRY,
)


def resolve_device(name: str) -> torch.device:
    """MODEL.DEVICE -> torch.device, with a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is {name!r} but PyTorch sees no CUDA device; add `MODEL.DEVICE cpu` to run on the CPU"
        )
    return device


def build_model(cfg) -> torch.nn.Module:
    """The model named by MODEL.META_ARCHITECTURE, with random weights, on MODEL.DEVICE.
    Load weights with `mask2former.checkpoint.load_weights(model, cfg.MODEL.WEIGHTS)`."""
    from ..config.key_support import check_supported

    check_supported(cfg)  # also for values set in Python after loading
    device = resolve_device(cfg.MODEL.DEVICE)
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
    "build_model",
    "resolve_device",
]
