"""Keys of the defaults that this project does not implement. Each is refused, with the reason,
when set to anything but its default (`check_supported`); every other key is read by the code
that builds or runs the model (tests/test_config_keys.py proves both)."""

from __future__ import annotations

from .config import ConfigError

_DEEPLAB = "it configures DeepLab's ASPP head, which this project does not implement"
_RFS = "it configures RepeatFactorTrainingSampler, which this project does not implement"
_PROPOSALS = "precomputed proposals feed Fast R-CNN-style detectors; Mask2Former uses none"

UNSUPPORTED_KEYS: dict[str, str] = {
    "VERSION": "configs of Detectron2's format version 2 only; older versions are not converted",
    "VIS_PERIOD": "drawing training predictions to TensorBoard is not implemented",
    "GLOBAL.HACK": "a Detectron2 internal with no function",
    "MODEL.RESNETS.DEFORM_MODULATED": "deformable convolutions are not implemented",
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": "deformable convolutions are not implemented",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS": _DEEPLAB,
    "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS": _DEEPLAB,
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT": _DEEPLAB,
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV": _DEEPLAB,
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": "it configures the DeepLab v3+ decoder, which this project does not implement",
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS": "it configures the DeepLab v3+ decoder, which this project does not implement",
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": "a per-pixel loss of DeepLab / SemSegFPNHead; Mask2Former is trained with "
    "the mask-classification losses (MODEL.MASK_FORMER.*_WEIGHT)",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": "the per-pixel loss weight of SemSegFPNHead; Mask2Former weights its losses "
    "with MODEL.MASK_FORMER.{CLASS,MASK,DICE}_WEIGHT",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": "the original never reads it: its pixel decoder "
    "uses MODEL.MASK_FORMER.NHEADS heads, and so do published weights; set NHEADS",
    "MODEL.MASK_FORMER.ENC_LAYERS": "a Transformer encoder in front of the decoder belongs to MaskFormer's "
    "StandardTransformerDecoder, which this project does not implement (the pixel decoder's encoder is "
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS)",
    "DATASETS.PROPOSAL_FILES_TRAIN": _PROPOSALS,
    "DATASETS.PROPOSAL_FILES_TEST": _PROPOSALS,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": _PROPOSALS,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": _PROPOSALS,
    "DATALOADER.SAMPLER_TRAIN": "only TrainingSampler (an infinite seeded shuffle) is implemented",
    "DATALOADER.REPEAT_THRESHOLD": _RFS,
    "DATALOADER.REPEAT_SQRT": _RFS,
    "SOLVER.BASE_LR_END": "it configures WarmupCosineLR, which this project does not implement",
    "SOLVER.NUM_DECAYS": "it configures WarmupStepWithFixedGammaLR, which this project does not implement",
    "SOLVER.RESCALE_INTERVAL": "it configures WarmupStepWithFixedGammaLR, which this project does not implement",
    "SOLVER.REFERENCE_WORLD_SIZE": "rescaling batch size, learning rate and schedule to the number of workers "
    "is not implemented; set SOLVER.IMS_PER_BATCH, BASE_LR and MAX_ITER for your run",
    "TEST.EXPECTED_RESULTS": "checking evaluation results against expected values is not implemented",
    "TEST.KEYPOINT_OKS_SIGMAS": "keypoint detection is not part of Mask2Former",
    "TEST.PRECISE_BN.ENABLED": "recomputing BatchNorm statistics after training is not implemented",
    "TEST.PRECISE_BN.NUM_ITER": "recomputing BatchNorm statistics after training is not implemented",
}


_MISSING = object()


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return _MISSING  # a config node that is not a whole Mask2Former config
        node = node[part]
    return node


def check_supported(cfg, source: str = "") -> None:
    """Raise ConfigError naming every key of UNSUPPORTED_KEYS set away from its default."""
    from .defaults import _C

    bad = [k for k in UNSUPPORTED_KEYS if _value(cfg, k) not in (_MISSING, _value(_C, k))]
    if bad:
        where = f"{source}: " if source else ""
        raise ConfigError(
            where
            + "; ".join(f"{k} is not supported: {UNSUPPORTED_KEYS[k]} (got {_value(cfg, k)!r})" for k in bad)
        )
