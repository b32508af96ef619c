"""`TextMaskFormer`: MaskFormer whose inference keeps a chosen vocabulary (a subset of classes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mask2former.config import CfgNode
from mask2former.modeling import META_ARCH_REGISTRY, MaskFormer
from mask2former.structures import ImageList

from .config import text_classifier_config
from .head import class_names


class TextMaskFormer(MaskFormer):
    """MaskFormer that, at inference, scores only the classes in `test_class_ids` (all when None):
    the other classes' logits are set to -inf before the usual post-processing, so semantic,
    panoptic and instance outputs never name them."""

    def __init__(self, *, test_class_ids: list[int] | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.test_class_ids = test_class_ids

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        wanted = list(text_classifier_config(cfg).TEST_CLASSES)
        ret = super().from_config(cfg)
        if not wanted:
            ret["test_class_ids"] = None
            return ret
        names = class_names(cfg)
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(f"MODEL.TEXT_CLASSIFIER.TEST_CLASSES {unknown} are not classes of {names}")
        ret["test_class_ids"] = sorted(names.index(n) for n in wanted)
        return ret

    def postprocess(self, outputs: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        if self.test_class_ids is None:
            return super().postprocess(outputs, batched_inputs, images)
        logits: Tensor = outputs["pred_logits"]  # [B, Q, K+1]
        blocked = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)  # [K+1]
        blocked[self.test_class_ids] = False
        blocked[-1] = False  # "no object" stays
        results = super().postprocess(
            {**outputs, "pred_logits": logits.masked_fill(blocked, float("-inf"))}, batched_inputs, images
        )
        keep = torch.tensor(self.test_class_ids)
        for r in results:
            if "instances" in r:  # top-k may still pair queries with blocked classes (score 0)
                inst = r["instances"]
                r["instances"] = inst[torch.isin(inst.pred_classes.cpu(), keep)]
        return results


@META_ARCH_REGISTRY.register("TextMaskFormer")
def build_text_maskformer(cfg: CfgNode) -> TextMaskFormer:
    return TextMaskFormer(**TextMaskFormer.from_config(cfg))
