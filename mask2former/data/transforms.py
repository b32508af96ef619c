"""Augmentations of the original project, applied with torchvision.transforms.v2 kernels.

A sample is a dict of tv_tensors: `"image"`: `tv_tensors.Image` uint8 [3, H, W] (RGB), and any
number of `tv_tensors.Mask` entries ([H, W] label maps or [N, H, W] masks). Geometric ops go
through `torchvision.transforms.v2.functional`, which resizes images bilinearly and masks with
nearest neighbour, so every entry keeps the same geometry. Each augmentation is a callable
`(sample, rng) -> sample` that draws its randomness only from `rng`, a `random.Random` given by
the caller (the training loader seeds one per sample from (seed, position)), never from global
random state.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .detection_utils import shortest_edge_size

Sample = dict


def _size(sample: Sample) -> tuple[int, int]:
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)


def _apply(sample: Sample, fn) -> Sample:
    return {k: fn(v) if isinstance(v, (tv_tensors.Image, tv_tensors.Mask)) else v for k, v in sample.items()}


class ResizeShortestEdge:
    """Resize the shortest edge to a length drawn from `short_edge_length` ("choice": one of the
    values; "range": uniform integer in [min, max]), capping the long edge at `max_size`."""

    def __init__(self, short_edge_length, max_size: int, sample_style: str = "choice"):
        if sample_style not in ("choice", "range"):
            raise ValueError(f"MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sample_style!r}")
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"'range' sampling wants two sizes (min, max), got {short_edge_length}")
        self.lengths = [int(x) for x in short_edge_length]
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        if self.sample_style == "range":
            short = rng.randint(self.lengths[0], self.lengths[1])
        else:
            short = rng.choice(self.lengths)
        return resize_shortest_edge(sample, short, self.max_size)


def resize_shortest_edge(sample: Sample, short: int, max_size: int) -> Sample:
    """Resize every entry so the shortest edge is `short` (long edge at most `max_size`); 0: unchanged."""
    if short == 0:
        return sample
    newh, neww = shortest_edge_size(*_size(sample), short, max_size)
    return _apply(sample, lambda t: F.resize(t, [newh, neww], antialias=True))


def crop_size_for(crop_type: str, crop_size, h: int, w: int, rng: random.Random) -> tuple[int, int]:
    """Detectron2's RandomCrop size rules: "relative", "relative_range", "absolute", "absolute_range"."""
    if crop_type == "relative":
        ch, cw = crop_size
        return int(h * ch + 0.5), int(w * cw + 0.5)
    if crop_type == "relative_range":
        lo = np.asarray(crop_size, dtype=np.float32)
        ch, cw = lo + np.array([rng.random(), rng.random()], dtype=np.float32) * (1 - lo)
        return int(h * ch + 0.5), int(w * cw + 0.5)
    if crop_type == "absolute":
        return min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    if crop_type == "absolute_range":
        ch = rng.randint(min(h, int(crop_size[0])), min(h, int(crop_size[1])))
        cw = rng.randint(min(w, int(crop_size[0])), min(w, int(crop_size[1])))
        return ch, cw
    raise ValueError(f"Unknown INPUT.CROP.TYPE {crop_type!r}")


class RandomCrop:
    """A random crop of the size `crop_size_for(crop_type, crop_size, H, W)`. With
    `single_category_max_area` < 1, retries (up to 10 times) until no single category of
    `sample["sem_seg"]` (ignoring `ignore_label`) covers more than that fraction of the crop and
    at least two categories are present; the last try is kept otherwise (the original's
    RandomCrop_CategoryAreaConstraint)."""

    def __init__(
        self, crop_type: str, crop_size, single_category_max_area: float = 1.0, ignore_label: int = 255
    ):
        self.crop_type = crop_type
        self.crop_size = crop_size
        self.max_area = float(single_category_max_area)
        self.ignore_label = ignore_label

    def _draw(self, h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
        ch, cw = crop_size_for(self.crop_type, self.crop_size, h, w, rng)
        if h < ch or w < cw:
            raise ValueError(f"Crop {ch}x{cw} is larger than the image {h}x{w}")
        return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        h, w = _size(sample)
        top, left, ch, cw = self._draw(h, w, rng)
        if self.max_area < 1.0:
            if "sem_seg" not in sample:
                raise KeyError("SINGLE_CATEGORY_MAX_AREA < 1 needs a 'sem_seg' map in the sample")
            sem = sample["sem_seg"]
            for _ in range(10):
                patch = sem[..., top : top + ch, left : left + cw]
                _, counts = torch.unique(patch[patch != self.ignore_label], return_counts=True)
                if len(counts) > 1 and counts.max().item() < self.max_area * counts.sum().item():
                    break
                top, left, ch, cw = self._draw(h, w, rng)
        return _apply(sample, lambda t: F.crop(t, top, left, ch, cw))


class RandomFlip:
    """Flip with probability `prob`, horizontally or vertically (INPUT.RANDOM_FLIP)."""

    def __init__(self, direction: str = "horizontal", prob: float = 0.5):
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {direction!r}")
        self.fn = F.horizontal_flip if direction == "horizontal" else F.vertical_flip
        self.prob = prob

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        if rng.random() < self.prob:
            return _apply(sample, self.fn)
        return sample


class ColorAugSSD:
    """SSD photometric distortion on the image only: brightness (delta 32), then contrast
    [0.5, 1.5] before or after saturation [0.5, 1.5] and hue (delta 18, OpenCV HSV), each applied
    with probability 0.5."""

    def __init__(
        self, brightness_delta: int = 32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta: int = 18
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast
        self.saturation_range = saturation
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _brightness(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.randrange(2):
            return self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def _contrast(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.randrange(2):
            return self._convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.randrange(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=rng.uniform(*self.saturation_range))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def _hue(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.randrange(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (
                hsv[:, :, 0].astype(np.int32) + rng.randint(-self.hue_delta, self.hue_delta)
            ) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        img = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())  # [H, W, 3] RGB
        img = self._brightness(img, rng)
        if rng.randrange(2):
            img = self._hue(self._saturation(self._contrast(img, rng), rng), rng)
        else:
            img = self._contrast(self._hue(self._saturation(img, rng), rng), rng)
        out = dict(sample)
        out["image"] = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        return out


class ResizeScale:
    """Large-scale jitter, step 1: draw s in [min_scale, max_scale] and resize so the image fits
    in (s * target_h, s * target_w) keeping its aspect ratio (Detectron2's ResizeScale)."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int):
        self.min_scale, self.max_scale = min_scale, max_scale
        self.target = (target_height, target_width)

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        h, w = _size(sample)
        s = rng.uniform(self.min_scale, self.max_scale)
        scale = min(s * self.target[0] / h, s * self.target[1] / w)
        newh, neww = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        return _apply(sample, lambda t: F.resize(t, [newh, neww], antialias=True))


class FixedSizeCrop:
    """Large-scale jitter, step 2: crop a random window of at most `crop_size`, then pad at the
    bottom/right to exactly `crop_size` (image with `pad_value`, masks with their own fill:
    `mask_fill` maps a sample key to its pad value, default 0)."""

    def __init__(self, crop_size: tuple[int, int], pad_value: float = 128.0, mask_fill: dict | None = None):
        self.crop_size = crop_size
        self.pad_value = pad_value
        self.mask_fill = mask_fill or {}

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        h, w = _size(sample)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top = int(round((h - ch) * rng.random()))
        left = int(round((w - cw) * rng.random()))
        pad = [0, 0, self.crop_size[1] - cw, self.crop_size[0] - ch]  # left, top, right, bottom
        out = {}
        for k, v in sample.items():
            if isinstance(v, (tv_tensors.Image, tv_tensors.Mask)):
                v = F.crop(v, top, left, ch, cw)
                fill = self.pad_value if isinstance(v, tv_tensors.Image) else self.mask_fill.get(k, 0)
                v = F.pad(v, pad, fill=fill)
            out[k] = v
        return out


def pad_to_divisible(sample: Sample, divisor: int, pad_value: float, mask_fill: dict) -> Sample:
    """Pad every entry at the bottom/right so H and W are multiples of `divisor`."""
    h, w = _size(sample)
    ph, pw = -(-h // divisor) * divisor - h, -(-w // divisor) * divisor - w
    if ph == 0 and pw == 0:
        return sample
    out = {}
    for k, v in sample.items():
        if isinstance(v, (tv_tensors.Image, tv_tensors.Mask)):
            fill = pad_value if isinstance(v, tv_tensors.Image) else mask_fill.get(k, 0)
            v = F.pad(v, [0, 0, pw, ph], fill=fill)
        out[k] = v
    return out


class Compose:
    def __init__(self, augs: list):
        self.augs = list(augs)

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        for a in self.augs:
            sample = a(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({[type(a).__name__ for a in self.augs]})"


__all__ = [
    "ColorAugSSD",
    "Compose",
    "FixedSizeCrop",
    "RandomCrop",
    "RandomFlip",
    "ResizeScale",
    "ResizeShortestEdge",
    "crop_size_for",
    "pad_to_divisible",
    "resize_shortest_edge",
    "shortest_edge_size",
]
