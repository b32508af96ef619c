"""`MaskFormer` meta-architecture: normalise and pad images, backbone, head, then losses in
training or semantic / panoptic / instance results at inference."""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CfgNode
from ..inference.postprocessing import (
    instance_inference,
    panoptic_inference,
    sem_seg_postprocess,
    semantic_inference,
)
from ..layers import ShapeSpec
from ..structures import ImageList
from .registry import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

logger = logging.getLogger(__name__)


class MaskFormer(nn.Module):
    """Backbone + MaskFormerHead (+ criterion for training).

    Input: a list of dicts, one per image, with `"image"`: uint8/float [3, H, W] in the channel
    order of `pixel_mean` (the config's INPUT.FORMAT), and optionally `"height"`, `"width"` (size
    of the outputs) and, in training, `"instances"` (`gt_classes` [N], `gt_masks` [N, H, W]).
    Output at inference: one dict per image with `"sem_seg"` [K, H, W], `"panoptic_seg"`
    (ids int32 [H, W], segments_info) and `"instances"`, as switched on.
    """

    pixel_mean: Tensor  # buffers [3, 1, 1]
    pixel_std: Tensor

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module | None,
        object_mask_threshold: float,
        overlap_threshold: float,
        thing_classes_mask: Tensor | None,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        inference_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if panoptic_on and thing_classes_mask is None:
            raise ValueError("panoptic inference needs to know which classes are things (dataset metadata)")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        if criterion is not None:
            self.criterion = criterion
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.size_divisibility = max(size_divisibility, getattr(backbone, "size_divisibility", 0))
        self.sem_seg_postprocess_before_inference = (
            sem_seg_postprocess_before_inference or panoptic_on or instance_on
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        # bool [K], moved to the outputs' device when used (a buffer would add to the model's
        # buffer count, which matches the original's exactly).
        self.thing_classes_mask = (
            thing_classes_mask if thing_classes_mask is not None else torch.zeros(0, dtype=torch.bool)
        )
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        self.inference_dtype = inference_dtype

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """The constructor's keyword arguments from a config: backbone by MODEL.BACKBONE.NAME, head
        by MODEL.SEM_SEG_HEAD.NAME, the criterion, and the MODEL.MASK_FORMER.TEST switches. A
        subclass adds its own arguments to the returned dict (see docs/EXTENDING.md)."""
        from .criterion import build_criterion

        backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(
            cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
        )
        head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, backbone.output_shape())
        test = cfg.MODEL.MASK_FORMER.TEST
        _check_tasks_fit_dataset(cfg)
        thing_mask = _thing_classes_mask(cfg) if (test.PANOPTIC_ON or test.INSTANCE_ON) else None
        if test.PANOPTIC_ON and thing_mask is None:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.PANOPTIC_ON needs metadata with thing_dataset_id_to_contiguous_id for "
                f"DATASETS.TRAIN[0] ({cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else 'DATASETS.TRAIN is empty'}); "
                "register the dataset (register_coco_panoptic / register_coco_instances set it when called; "
                "see README, custom datasets) before building the model"
            )
        if len(cfg.MODEL.PIXEL_MEAN) != len(cfg.MODEL.PIXEL_STD):
            raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have the same length")
        return {
            "backbone": backbone,
            "sem_seg_head": head,
            "criterion": build_criterion(cfg),
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "thing_classes_mask": thing_mask,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "inference_dtype": _inference_dtype(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise each image and pad the batch to a multiple of the size divisibility."""
        if not batched_inputs:
            raise ValueError("MaskFormer got an empty batch (no images)")
        images = []
        for i, x in enumerate(batched_inputs):
            if "image" not in x:
                raise KeyError(f"input {i} has no 'image' entry (keys: {sorted(x)})")
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"input {i} ({x.get('file_name', 'no file name')}): expected an image [3, H, W], got shape "
                    f"{tuple(img.shape)}; convert grayscale or RGBA images to 3 channels first"
                )
            images.append((img.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            outputs = self.sem_seg_head(self.backbone(images.tensor))
            if "instances" not in batched_inputs[0]:
                raise KeyError("training inputs need 'instances' with gt_classes and gt_masks")
            targets = self.prepare_targets([x["instances"] for x in batched_inputs], images)
            return self.criterion(outputs, targets)
        low_precision = self.inference_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.inference_dtype, enabled=low_precision):
            outputs = self.sem_seg_head(self.backbone(images.tensor))
        return self.postprocess(outputs, batched_inputs, images)

    def prepare_targets(self, gt_instances: list, images: ImageList) -> list[dict[str, Tensor]]:
        """Pad each image's masks to the batch's padded size: {"labels" [N], "masks" [N, Hp, Wp]}."""
        hp, wp = images.tensor.shape[-2:]
        targets = []
        for inst in gt_instances:
            masks = inst.gt_masks.to(self.device)
            padded = masks.new_zeros((masks.shape[0], hp, wp))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes.to(self.device), "masks": padded})
        return targets

    @torch.no_grad()
    def postprocess(self, outputs: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Per image: crop and resize predictions to the output size, then the switched-on
        inferences, in float32 (semantic inference's sum over queries in the inference dtype)."""
        mask_cls_results = outputs["pred_logits"].float()  # [B, Q, K+1]
        mask_pred_results = F.interpolate(
            outputs["pred_masks"].float(), size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )  # [B, Q, Hp, Wp]
        results = []
        for mask_cls, mask_pred, x, image_size in zip(
            mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            r: dict[str, Any] = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
            binary = mask_pred > 0 if self.instance_on else None  # [Q, H, W]
            mask_probs = mask_pred.sigmoid()  # [Q, H, W], shared by the three inferences
            if self.semantic_on:
                sem_seg = semantic_inference(mask_cls, mask_probs, self.inference_dtype)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
                r["sem_seg"] = sem_seg
            if self.panoptic_on:
                r["panoptic_seg"] = panoptic_inference(
                    mask_cls,
                    mask_probs,
                    is_thing=self.thing_classes_mask,  # on the CPU: read there, no device copy
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                )
            if self.instance_on:
                r["instances"] = instance_inference(
                    mask_cls,
                    cast(Tensor, binary),  # set: instance_on
                    mask_probs,
                    max_detections=self.test_topk_per_image,
                    is_thing=self.thing_classes_mask if self.panoptic_on else None,
                )
            results.append(r)
        return results


def _check_tasks_fit_dataset(cfg: CfgNode) -> None:
    """An instance-only training set (COCO instances JSON: thing classes, no stuff classes) has no
    stuff or semantic ground truth: panoptic and semantic outputs still run (every class is a thing,
    as in the original's ADE20K instance configs), and one warning names the keys that skip them."""
    from ..data import MetadataCatalog

    test = cfg.MODEL.MASK_FORMER.TEST
    if not cfg.DATASETS.TRAIN or not (test.PANOPTIC_ON or test.SEMANTIC_ON):
        return
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    if meta.get("evaluator_type") == "coco" and "stuff_classes" not in meta:
        logger.warning(
            "DATASETS.TRAIN[0] %r is an instance-only dataset (COCO instances JSON, no stuff classes): its "
            "panoptic and semantic outputs treat every class as a thing and have no ground truth to be "
            "scored against; `MODEL.MASK_FORMER.TEST.PANOPTIC_ON False MODEL.MASK_FORMER.TEST.SEMANTIC_ON "
            "False MODEL.MASK_FORMER.TEST.INSTANCE_ON True` skips them (the configs under "
            "configs/coco/instance-segmentation/ do)",
            name,
        )


def _thing_classes_mask(cfg: CfgNode) -> Tensor | None:
    """bool [K]: which contiguous class ids are things, from the training set's metadata."""
    from ..data import MetadataCatalog

    if not cfg.DATASETS.TRAIN:
        return None
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    thing_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    if thing_map is None:
        return None
    mask = torch.zeros(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, dtype=torch.bool)
    ids = list(thing_map.values())
    if ids and max(ids) >= mask.numel():
        raise ValueError(
            f"metadata of {cfg.DATASETS.TRAIN[0]!r} names thing class id {max(ids)}, but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {mask.numel()}"
        )
    mask[ids] = True
    return mask


@META_ARCH_REGISTRY.register("MaskFormer")
def build_maskformer(cfg: CfgNode) -> MaskFormer:
    """MaskFormer from the config (see `MaskFormer.from_config`)."""
    return MaskFormer(**MaskFormer.from_config(cfg))


def _inference_dtype(cfg: CfgNode) -> torch.dtype:
    """MODEL.INFERENCE_DTYPE on MODEL.DEVICE (float16 on a CPU runs in bfloat16, with one warning)."""
    from ..utils.precision import autocast_dtype

    dtype = autocast_dtype(
        cfg.MODEL.INFERENCE_DTYPE, torch.device(cfg.MODEL.DEVICE).type, "MODEL.INFERENCE_DTYPE"
    )
    logger.info("Inference precision: %s", "float32" if dtype == torch.float32 else f"{dtype} autocast")
    return dtype
