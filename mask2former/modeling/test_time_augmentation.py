"""Test-time augmentation (TEST.AUG.*): multi-scale and flipped inference, as the original's
`SemanticSegmentorWithTTA` does for the paper's multi-scale ("ms") results, extended to
panoptic and instance outputs.

Each image is resized so that its shortest edge is each of TEST.AUG.MIN_SIZES (long edge at
most TEST.AUG.MAX_SIZE), and also mirrored left-right when TEST.AUG.FLIP is set. Every view is
run through the model and brought back to the output size (and un-mirrored). Then:

- semantic: the per-pixel class scores ("sem_seg") are averaged over the views, as the original;
- panoptic and instance: the per-query predictions are merged before the usual inference: class
  probabilities and mask probabilities of query q are averaged over the views. The queries are
  the same learned embeddings in every view, so query q tends to predict the same segment in
  each view; `query_agreement` measures how well this holds for a given model and image.

Shape shorthand: Q queries, K classes, H, W output size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from ..data.transforms import shortest_edge_size
from ..inference.postprocessing import (
    class_mask_scores,
    instance_inference,
    panoptic_inference,
    sem_seg_postprocess,
)

if TYPE_CHECKING:
    from .meta_arch import MaskFormer


class MaskFormerWithTTA(nn.Module):
    """Wraps a `MaskFormer`: the same input and output format, results averaged over views.

    Input: a list of dicts as `MaskFormer` takes them at inference ("image" [3, h, w] and the
    output "height", "width"). The image may already be resized (by the inference mapper); each
    view's size is computed from the output size, as Detectron2's `DatasetMapperTTA` does."""

    def __init__(self, model: MaskFormer, *, min_sizes: tuple[int, ...], max_size: int, flip: bool):
        super().__init__()
        if not min_sizes:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: test-time augmentation needs at least one size")
        if any(int(s) <= 0 for s in min_sizes) or max_size <= 0:
            raise ValueError(f"TEST.AUG.MIN_SIZES {min_sizes} and MAX_SIZE {max_size} must be positive")
        self.model = model
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip = bool(flip)

    def views(self, image: Tensor, out_hw: tuple[int, int]) -> list[tuple[Tensor, bool]]:
        """image [3, h, w] -> [(view [3, h', w'], mirrored)] for every size (and flip)."""
        out = []
        for short in self.min_sizes:
            size = shortest_edge_size(out_hw[0], out_hw[1], short, self.max_size)
            view = image if size == tuple(image.shape[-2:]) else TF.resize(image, list(size), antialias=True)
            out.append((view, False))
            if self.flip:
                out.append((view.flip(-1), True))
        return out

    @torch.no_grad()
    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return [self.inference_one_image(x) for x in batched_inputs]

    def inference_one_image(self, x: dict) -> dict:
        model = self.model
        out_hw = (x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))
        sem_seg = None
        class_probs: Tensor | None = None  # [Q, K+1], summed over the views
        mask_probs: Tensor | None = None  # [Q, H, W], summed over the views
        views = self.views(x["image"], out_hw)
        for view, mirrored in views:
            inputs = [{"image": view, "height": out_hw[0], "width": out_hw[1]}]
            if model.panoptic_on or model.instance_on:
                # One network run serves the three outputs: the model then makes its semantic
                # scores from the same output-size query predictions (inference after resizing).
                cls, masks = query_predictions(model, inputs)  # [Q, K+1], [Q, H, W] probabilities
                masks = masks.flip(-1) if mirrored else masks
                class_probs = cls if class_probs is None else class_probs + cls
                mask_probs = masks if mask_probs is None else mask_probs + masks
                s = class_mask_scores(cls[:, :-1], masks) if model.semantic_on else None
            else:
                s = model(inputs)[0]["sem_seg"]  # [K, H, W]
                s = s.flip(-1) if mirrored else s
            if s is not None:
                sem_seg = s if sem_seg is None else sem_seg + s
        result: dict = {}
        n = len(views)
        if sem_seg is not None:
            result["sem_seg"] = sem_seg / n
        if class_probs is None or mask_probs is None:  # both or neither are set
            return result
        class_probs, mask_probs = class_probs / n, mask_probs / n
        class_logits = class_probs.clamp_min(1e-12).log()  # softmax(log p) = p
        if model.panoptic_on:
            result["panoptic_seg"] = panoptic_inference(
                class_logits,
                mask_probs,
                is_thing=model.thing_classes_mask,
                object_mask_threshold=model.object_mask_threshold,
                overlap_threshold=model.overlap_threshold,
            )
        if model.instance_on:
            result["instances"] = instance_inference(
                class_logits,
                mask_probs > 0.5,  # [Q, H, W] binary masks of the averaged probabilities
                mask_probs,
                max_detections=model.test_topk_per_image,
                is_thing=model.thing_classes_mask if model.panoptic_on else None,
            )
        return result


def query_predictions(model: MaskFormer, inputs: list[dict]) -> tuple[Tensor, Tensor]:
    """One image through `model` (a MaskFormer): class probabilities [Q, K+1] and mask
    probabilities [Q, H, W] at the output size ("height", "width"), in float32."""
    images = model.preprocess_image(inputs)
    low_precision = model.inference_dtype != torch.float32
    with torch.autocast(model.device.type, dtype=model.inference_dtype, enabled=low_precision):
        outputs = model.sem_seg_head(model.backbone(images.tensor))
    masks = F.interpolate(
        outputs["pred_masks"].float(), size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
    )[0]  # [Q, Hp, Wp]
    x = inputs[0]
    masks = sem_seg_postprocess(masks, images.image_sizes[0], x["height"], x["width"])
    return outputs["pred_logits"][0].float().softmax(-1), masks.sigmoid()


@torch.no_grad()
def query_agreement(model: MaskFormer, tta: MaskFormerWithTTA, x: dict, score_threshold: float = 0.5) -> dict:
    """How well query q of the first view (the plain one when MIN_SIZES starts with the test
    size) predicts the same segment in the other views: over the queries whose best class is
    an object with probability > `score_threshold` in the first view, the mean IoU of their
    binary masks with the same query's mask in each other view, the fraction whose best class
    is the same, and the mean IoU with the best-matching query of the other view (the upper
    bound a query-matching merge could reach)."""
    out_hw = (x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))
    preds = []
    for view, mirrored in tta.views(x["image"], out_hw):
        cls, masks = query_predictions(model, [{"image": view, "height": out_hw[0], "width": out_hw[1]}])
        preds.append((cls, (masks.flip(-1) if mirrored else masks) > 0.5))
    cls0, masks0 = preds[0]
    scores, labels = cls0.max(-1)
    kept = (labels != cls0.shape[-1] - 1) & (scores > score_threshold)
    if not kept.any():
        return {
            "queries": 0,
            "same_query_iou": float("nan"),
            "same_class": float("nan"),
            "best_iou": float("nan"),
        }
    a = masks0[kept].flatten(1).float()  # [N, HW]
    same_iou, same_cls, best_iou = [], [], []
    for cls, masks in preds[1:]:
        b = masks.flatten(1).float()  # [Q, HW]
        inter = a @ b.T  # [N, Q]
        union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
        iou = inter / union.clamp_min(1)
        idx = kept.nonzero()[:, 0]
        same_iou.append(iou[torch.arange(len(idx)), idx].mean().item())
        best_iou.append(iou.max(1).values.mean().item())
        same_cls.append((cls.argmax(-1)[kept] == labels[kept]).float().mean().item())
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {
        "queries": int(kept.sum()),
        "same_query_iou": mean(same_iou),
        "same_class": mean(same_cls),
        "best_iou": mean(best_iou),
    }


def build_tta_model(cfg, model: MaskFormer) -> MaskFormerWithTTA:
    """`model` wrapped for TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}."""
    aug = cfg.TEST.AUG
    return MaskFormerWithTTA(model, min_sizes=tuple(aug.MIN_SIZES), max_size=aug.MAX_SIZE, flip=aug.FLIP)
