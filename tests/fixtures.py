"""Access to the reference fixtures recorded from the original implementation.

They live in `shared/fixtures/` beside the checkout (`MASK2FORMER_FIXTURES` overrides the
folder). Tests that need them skip with the reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURES_DIR = Path(os.environ.get("MASK2FORMER_FIXTURES", _DEFAULT))


def load_fixture(name: str = "reference_tiny_r18.pt") -> dict:
    path = FIXTURES_DIR / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set MASK2FORMER_FIXTURES)")
    return torch.load(path, weights_only=True)


def unpack_state_dict(fixture: dict) -> dict[str, torch.Tensor]:
    """The fixture's full state dict (int8-packed tensors expanded exactly)."""
    packed = {k: v["int8"].float() * 2.0 ** v["exp"] for k, v in fixture["state_dict_packed"].items()}
    return {**fixture["state_dict_float"], **packed}


def tiny_cfg(num_classes: int = 5, thing_ids: tuple[int, ...] = (0, 1, 2)):
    """A small Mask2Former config (ResNet-18, 32-d heads) on CPU, with metadata registered
    under the dataset name "tiny_test" (`thing_ids` are contiguous thing class ids)."""
    from mask2former.config import get_cfg
    from mask2former.data.catalog import MetadataCatalog

    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.META_ARCHITECTURE", "MaskFormer",
            "MODEL.BACKBONE.FREEZE_AT", 0,
            "MODEL.RESNETS.DEPTH", 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
            "MODEL.RESNETS.STRIDE_IN_1X1", False,
            "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
            "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53],
            "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
            "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
            "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder",
            "MODEL.MASK_FORMER.HIDDEN_DIM", 32,
            "MODEL.MASK_FORMER.NHEADS", 4,
            "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
            "MODEL.MASK_FORMER.DEC_LAYERS", 4,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 8,
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
            "MODEL.MASK_FORMER.DROPOUT", 0.0,
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON", True,
            "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", True,
            "DATASETS.TRAIN", ("tiny_test",),
            "DATASETS.TEST", ("tiny_test",),
            "INPUT.FORMAT", "RGB",
        ]
    )  # fmt: skip
    MetadataCatalog.get("tiny_test").set(thing_dataset_id_to_contiguous_id={i + 1: i for i in thing_ids})
    return cfg
