"""Dataset mappers: a dataset dict (file names + annotations) -> the dict the model consumes.

Output of every mapper:
    "image": uint8 [3, H, W] in cfg.INPUT.FORMAT channel order ("RGB" or "BGR"), after augmentation
    "height", "width": the ORIGINAL image size (the model resizes its outputs to it)
    "file_name", "image_id"
    training only: "instances": Instances((H, W), gt_classes int64 [N] contiguous ids,
                                          gt_masks bool [N, H, W]), N = 0 allowed
                   "sem_seg": int64 [H, W], ignore_label for void (semantic / panoptic mappers)

Training mappers are chosen by cfg.INPUT.DATASET_MAPPER_NAME from DATASET_MAPPER_REGISTRY (by
class name, or by the original project's names listed in MAPPER_CONFIG_NAMES) and built as
`Mapper(cfg, is_train=True)`. A user's own mapper registers itself with
`@DATASET_MAPPER_REGISTRY.register()` and is selected by its class name.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from fvcore.common.registry import Registry
from torchvision import tv_tensors

from ..structures import Instances
from . import transforms as T
from .catalog import MetadataCatalog
from .detection_utils import (
    DatasetFormatError,
    check_image_size,
    read_image,
    read_label_png,
    read_panoptic_png,
    segmentation_to_mask,
)

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = (
    "Training dataset mappers, chosen by INPUT.DATASET_MAPPER_NAME (the class name, or one of the "
    "original project's names in MAPPER_CONFIG_NAMES); called as obj(cfg, is_train) and then "
    "obj(dataset_dict, rng) -> dict. Register a class with @DATASET_MAPPER_REGISTRY.register()."
)

# The original project's INPUT.DATASET_MAPPER_NAME values -> the registered mapper classes.
MAPPER_CONFIG_NAMES = {
    "mask_former_semantic": "MaskFormerSemanticDatasetMapper",
    "mask_former_instance": "MaskFormerInstanceDatasetMapper",
    "mask_former_panoptic": "MaskFormerPanopticDatasetMapper",
    "coco_instance_lsj": "COCOInstanceLSJDatasetMapper",
    "coco_panoptic_lsj": "COCOPanopticLSJDatasetMapper",
}


def _load_image(dataset_dict: dict) -> tuple[tv_tensors.Image, tuple[int, int]]:
    """Decode `file_name` as RGB uint8 [3, H, W] and check it against the dict's height/width;
    returns the image and its (H, W)."""
    img = read_image(dataset_dict["file_name"], "RGB")
    check_image_size(dataset_dict, img)
    img = np.require(
        img, requirements=["C", "W"]
    )  # a writable copy only when the decoder gave a read-only view
    return tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1)), img.shape[:2]


def _to_format(image: torch.Tensor, fmt: str) -> torch.Tensor:
    """RGB uint8 [3, H, W] -> plain tensor in `fmt` order."""
    image = image.as_subclass(torch.Tensor)
    if fmt == "BGR":
        image = image.flip(0)
    elif fmt != "RGB":
        raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {fmt!r}")
    return image.contiguous()


def _load_sem_seg(file_name: str, shape: tuple[int, int]) -> tv_tensors.Mask:
    sem = read_label_png(file_name)
    if sem.shape != shape:
        raise DatasetFormatError(
            f"Label {file_name} is {sem.shape[0]}x{sem.shape[1]} but its image is {shape[0]}x{shape[1]}"
        )
    return tv_tensors.Mask(torch.from_numpy(sem))


def _check_classes(classes: torch.Tensor, num_classes: int, source: str) -> None:
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        bad = classes[(classes < 0) | (classes >= num_classes)].unique().tolist()
        raise DatasetFormatError(
            f"{source} has class ids {bad} outside [0, {num_classes}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
        )


def _out_dict(dataset_dict: dict, image: torch.Tensor, fmt: str, orig_hw: tuple[int, int]) -> dict:
    out = {k: v for k, v in dataset_dict.items() if k not in ("annotations", "segments_info")}
    out["image"] = _to_format(image, fmt)
    out["height"], out["width"] = orig_hw
    out.setdefault("image_id", dataset_dict.get("file_name"))
    return out


def _instances_from_masks(masks: torch.Tensor, classes: torch.Tensor) -> Instances:
    """masks [N, H, W] (any dtype), classes [N]: drop empty masks, return Instances."""
    masks = masks.as_subclass(torch.Tensor).bool()
    keep = masks.flatten(1).any(1) if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
    h, w = masks.shape[-2:]
    return Instances((h, w), gt_classes=classes[keep].long(), gt_masks=masks[keep])


def _ignore_label(cfg) -> int:
    """The label of void pixels: MODEL.SEM_SEG_HEAD.IGNORE_VALUE, which must agree with the
    training set's metadata `ignore_label` where it has one."""
    value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    if cfg.DATASETS.TRAIN:
        name = cfg.DATASETS.TRAIN[0]
        registered = MetadataCatalog.get(name).get("ignore_label", value)
        if int(registered) != value:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {value} but dataset {name!r} marks void pixels with "
                f"{registered} (its metadata ignore_label); set IGNORE_VALUE to {registered}"
            )
    return value


def _shortest_edge_augs(cfg, crop_with_category_area: bool, ignore_label: int) -> list:
    augs: list = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        area = cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA if crop_with_category_area else 1.0
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, area, ignore_label))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(T.ColorAugSSD())
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(cfg.INPUT.RANDOM_FLIP))
    return augs


def _lsj_augs(cfg) -> list:
    augs: list = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(cfg.INPUT.RANDOM_FLIP))
    size = cfg.INPUT.IMAGE_SIZE
    augs += [
        T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
        T.FixedSizeCrop((size, size)),
    ]
    return augs


class _TrainMapper:
    """Shared set-up: augmentation list, image format, ignore label, class count. Called as
    `mapper(dataset_dict, rng)`: every random draw comes from `rng` (a `random.Random`; the
    training loader seeds one per sample, see `MapDataset`)."""

    takes_rng = True  # MapDataset passes its per-sample generator

    def __init__(self, cfg, is_train: bool = True):
        if not is_train:
            raise ValueError(
                f"{type(self).__name__} is a training mapper; use InferenceDatasetMapper for evaluation"
            )
        if cfg.INPUT.MASK_FORMAT not in ("polygon", "bitmask"):
            # Polygon and RLE annotations are both rasterised to bit masks here (as the
            # original's mappers do), so either value gives the same targets.
            raise ValueError(
                f"INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got {cfg.INPUT.MASK_FORMAT!r}"
            )
        self.is_train = is_train
        self.image_format = cfg.INPUT.FORMAT
        self.ignore_label = _ignore_label(cfg)
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self.size_divisibility = int(cfg.INPUT.SIZE_DIVISIBILITY)
        self.augmentations = T.Compose(self._build_augs(cfg))
        logger.info("%s augmentations: %s", type(self).__name__, self.augmentations)

    def _build_augs(self, cfg) -> list:
        raise TypeError(f"{type(self).__name__} must define _build_augs")

    def _augment(self, sample: dict, rng: random.Random | None) -> dict:
        """The augmentations, drawing from `rng` (a fresh unseeded generator when None)."""
        return self.augmentations(sample, random.Random() if rng is None else rng)

    def _pad(self, sample: dict) -> dict:
        if self.size_divisibility > 0:
            fills = {"sem_seg": self.ignore_label, "pan_seg": 0, "masks": 0}
            return T.pad_to_divisible(sample, self.size_divisibility, 128.0, fills)
        return sample


@DATASET_MAPPER_REGISTRY.register()
class MaskFormerSemanticDatasetMapper(_TrainMapper):
    """Semantic segmentation: shortest-edge resize, random crop with SINGLE_CATEGORY_MAX_AREA,
    SSD colour jitter, flip, padding to SIZE_DIVISIBILITY (ignore_label). One instance per class
    present. A crop that keeps no labelled pixel is kept (N = 0), as in the original."""

    def _build_augs(self, cfg) -> list:
        return _shortest_edge_augs(cfg, True, self.ignore_label)

    def __call__(self, dataset_dict: dict, rng: random.Random | None = None) -> dict:
        if "sem_seg_file_name" not in dataset_dict:
            raise DatasetFormatError(
                f"{dataset_dict.get('file_name')}: semantic mapper needs 'sem_seg_file_name'"
            )
        image, orig = _load_image(dataset_dict)
        sample = {"image": image, "sem_seg": _load_sem_seg(dataset_dict["sem_seg_file_name"], orig)}
        sample = self._pad(self._augment(sample, rng))
        sem = sample["sem_seg"].as_subclass(torch.Tensor).long()
        classes = sem.unique()
        classes = classes[classes != self.ignore_label]
        _check_classes(classes, self.num_classes, dataset_dict["sem_seg_file_name"])
        masks = sem[None] == classes[:, None, None]
        out = _out_dict(dataset_dict, sample["image"], self.image_format, orig)
        out["sem_seg"] = sem
        out["instances"] = _instances_from_masks(masks, classes)
        return out


@DATASET_MAPPER_REGISTRY.register()
class MaskFormerInstanceDatasetMapper(_TrainMapper):
    """Instance segmentation from COCO-style annotations (polygons or RLE; crowd regions are
    not targets): shortest-edge resize, random crop, SSD colour jitter, flip, padding."""

    def _build_augs(self, cfg) -> list:
        return _shortest_edge_augs(cfg, False, self.ignore_label)

    def __call__(self, dataset_dict: dict, rng: random.Random | None = None) -> dict:
        image, orig = _load_image(dataset_dict)
        masks, classes = annotations_to_masks(dataset_dict, orig)
        sample = {"image": image, "masks": tv_tensors.Mask(masks)}
        sample = self._pad(self._augment(sample, rng))
        _check_classes(classes, self.num_classes, dataset_dict["file_name"])
        out = _out_dict(dataset_dict, sample["image"], self.image_format, orig)
        out["instances"] = _instances_from_masks(sample["masks"], classes)
        return out


def annotations_to_masks(dataset_dict: dict, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-crowd annotations -> (masks uint8 [N, H, W], classes int64 [N])."""
    src = dataset_dict["file_name"]
    for i, a in enumerate(dataset_dict.get("annotations", [])):
        if not isinstance(a, dict) or "segmentation" not in a or "category_id" not in a:
            raise DatasetFormatError(
                f"Annotation {i} of {src} is not a dict with 'segmentation' and 'category_id'"
            )
        if not isinstance(a["category_id"], (int, np.integer)) or isinstance(a["category_id"], bool):
            raise DatasetFormatError(
                f"Annotation {i} of {src}: category_id {a['category_id']!r} is not an integer"
            )
    annos = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    masks = [segmentation_to_mask(a["segmentation"], hw[0], hw[1], src) for a in annos]
    classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    if not masks:
        return torch.zeros((0, *hw), dtype=torch.uint8), classes
    return torch.from_numpy(np.stack(masks).astype(np.uint8)), classes


def _load_panoptic(dataset_dict: dict, hw: tuple[int, int]) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic PNG -> segment ids int64 [H, W]; checks that every id in the PNG is in the JSON."""
    pan_file = dataset_dict["pan_seg_file_name"]
    ids = read_panoptic_png(pan_file)
    if ids.shape != hw:
        raise DatasetFormatError(
            f"Panoptic PNG {pan_file} is {ids.shape[0]}x{ids.shape[1]}, its image {hw[0]}x{hw[1]}"
        )
    segments = dataset_dict["segments_info"]
    unknown = set(np.unique(ids).tolist()) - {0} - {int(s["id"]) for s in segments}
    if unknown:
        raise DatasetFormatError(
            f"Panoptic PNG {pan_file} has segment ids {sorted(unknown)[:10]} that its JSON does not list"
        )
    return torch.from_numpy(ids), segments


def _panoptic_instances(pan: torch.Tensor, segments: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-crowd segments of an id map [H, W] -> (masks bool [N, H, W], classes int64 [N])."""
    segs = [s for s in segments if not s.get("iscrowd", 0)]
    if not segs:
        return torch.zeros((0, *pan.shape), dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    ids = torch.tensor([int(s["id"]) for s in segs], dtype=pan.dtype)
    classes = torch.tensor([int(s["category_id"]) for s in segs], dtype=torch.int64)
    return pan[None] == ids[:, None, None], classes


def _semantic_from_panoptic(pan: torch.Tensor, segments: list[dict], ignore_label: int) -> torch.Tensor:
    sem = torch.full_like(pan, ignore_label)
    for s in segments:
        sem[pan == int(s["id"])] = int(s["category_id"])
    return sem


@DATASET_MAPPER_REGISTRY.register()
class MaskFormerPanopticDatasetMapper(_TrainMapper):
    """Panoptic segmentation from COCO-format PNG + segments_info: the semantic mapper's
    augmentations (the category-area crop uses `sem_seg_file_name` when given, else the
    semantic map implied by the panoptic labels); one instance per non-crowd segment."""

    def _build_augs(self, cfg) -> list:
        return _shortest_edge_augs(cfg, True, self.ignore_label)

    def __call__(self, dataset_dict: dict, rng: random.Random | None = None) -> dict:
        image, orig = _load_image(dataset_dict)
        pan, segments = _load_panoptic(dataset_dict, orig)
        if "sem_seg_file_name" in dataset_dict:
            sem = _load_sem_seg(dataset_dict["sem_seg_file_name"], orig)
        else:
            sem = tv_tensors.Mask(_semantic_from_panoptic(pan, segments, self.ignore_label))
        sample = {"image": image, "pan_seg": tv_tensors.Mask(pan), "sem_seg": sem}
        sample = self._pad(self._augment(sample, rng))
        masks, classes = _panoptic_instances(sample["pan_seg"].as_subclass(torch.Tensor), segments)
        _check_classes(classes, self.num_classes, dataset_dict["pan_seg_file_name"])
        out = _out_dict(dataset_dict, sample["image"], self.image_format, orig)
        out["sem_seg"] = sample["sem_seg"].as_subclass(torch.Tensor).long()
        out["instances"] = _instances_from_masks(masks, classes)
        return out


@DATASET_MAPPER_REGISTRY.register()
class COCOInstanceLSJDatasetMapper(_TrainMapper):
    """COCO instance segmentation with large-scale jitter: flip, resize so the image fits
    IMAGE_SIZE * s (s in [MIN_SCALE, MAX_SCALE]), crop/pad to IMAGE_SIZE x IMAGE_SIZE (image
    padded with 128)."""

    def _build_augs(self, cfg) -> list:
        return _lsj_augs(cfg)

    def __call__(self, dataset_dict: dict, rng: random.Random | None = None) -> dict:
        image, orig = _load_image(dataset_dict)
        masks, classes = annotations_to_masks(dataset_dict, orig)
        _check_classes(classes, self.num_classes, dataset_dict["file_name"])
        sample = self._augment({"image": image, "masks": tv_tensors.Mask(masks)}, rng)
        out = _out_dict(dataset_dict, sample["image"], self.image_format, orig)
        out["instances"] = _instances_from_masks(sample["masks"], classes)
        return out


@DATASET_MAPPER_REGISTRY.register()
class COCOPanopticLSJDatasetMapper(_TrainMapper):
    """COCO panoptic with large-scale jitter (as `coco_instance_lsj`), targets from the
    augmented panoptic id map: one instance per non-crowd segment, things and stuff."""

    def _build_augs(self, cfg) -> list:
        return _lsj_augs(cfg)

    def __call__(self, dataset_dict: dict, rng: random.Random | None = None) -> dict:
        image, orig = _load_image(dataset_dict)
        pan, segments = _load_panoptic(dataset_dict, orig)
        sample = self._augment({"image": image, "pan_seg": tv_tensors.Mask(pan)}, rng)
        masks, classes = _panoptic_instances(sample["pan_seg"].as_subclass(torch.Tensor), segments)
        _check_classes(classes, self.num_classes, dataset_dict["pan_seg_file_name"])
        out = _out_dict(dataset_dict, sample["image"], self.image_format, orig)
        out["instances"] = _instances_from_masks(masks, classes)
        return out


class InferenceDatasetMapper:
    """Evaluation / inference: decode, resize the shortest edge to INPUT.MIN_SIZE_TEST (long
    edge at most INPUT.MAX_SIZE_TEST), no augmentation. Annotation file names pass through
    (evaluators read ground truth from them); "annotations" are dropped."""

    def __init__(self, cfg, is_train: bool = False):
        self.image_format = cfg.INPUT.FORMAT
        self.min_size = int(cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, dataset_dict: dict) -> dict:
        image, orig = _load_image(dataset_dict)
        if self.min_size > 0:
            image = T.resize_shortest_edge({"image": image}, self.min_size, self.max_size)["image"]
        return _out_dict(dataset_dict, image, self.image_format, orig)


def build_dataset_mapper(cfg, is_train: bool = True):
    """The training mapper named by cfg.INPUT.DATASET_MAPPER_NAME, or the inference mapper."""
    if not is_train:
        return InferenceDatasetMapper(cfg)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    registered = MAPPER_CONFIG_NAMES.get(name, name)
    if registered not in DATASET_MAPPER_REGISTRY:
        known = sorted(MAPPER_CONFIG_NAMES) + sorted(k for k, _ in DATASET_MAPPER_REGISTRY)
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME {name!r} is not registered; known: {known}")
    return DATASET_MAPPER_REGISTRY.get(registered)(cfg, is_train=True)


__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "MAPPER_CONFIG_NAMES",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "InferenceDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "annotations_to_masks",
    "build_dataset_mapper",
]
