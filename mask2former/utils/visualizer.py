"""Drawing segmentation results the way Detectron2 users know them: translucent coloured masks
with outlines and class names; instances also get a box and their score.

    vis = Visualizer(image_rgb, metadata, scale=2.0)
    out = vis.draw_panoptic_seg(panoptic_seg, segments_info)   # or draw_instance_predictions /
    cv2.imwrite("out.png", out.get_image()[:, :, ::-1])         # draw_sem_seg / draw_dataset_dict
    # or out.save("out.png")

Images are RGB uint8 [H, W, 3]. Class names and colours come from the dataset metadata
(`stuff_classes`/`stuff_colors` for semantic and panoptic ids, `thing_classes`/`thing_colors` for
instance classes); classes without a colour get a fixed one from a palette. Drawing uses OpenCV only.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch
from PIL import Image

from ..structures import Instances

__all__ = ["VisImage", "Visualizer", "class_color"]


def class_color(index: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour for class `index` (golden-ratio hue steps)."""
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _jitter(color: tuple[int, int, int], k: int) -> tuple[int, int, int]:
    """A deterministic variation of `color` for the k-th instance of a class."""
    if k == 0:
        return color
    rng = np.random.default_rng(k)
    r, g, b = np.clip(np.array(color, dtype=np.float64) + rng.uniform(-60, 60, 3), 0, 255)
    return int(r), int(g), int(b)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class VisImage:
    """The drawing canvas: RGB uint8 [H, W, 3]."""

    def __init__(self, image: np.ndarray):
        self.image = image

    def get_image(self) -> np.ndarray:
        """The drawn image, RGB uint8 [H, W, 3]."""
        return self.image

    def save(self, path: str) -> None:
        Image.fromarray(self.image).save(path)


class Visualizer:
    """Draws one image's predictions (see the module docstring).

    Args:
        img_rgb: RGB uint8 [H, W, 3].
        metadata: dataset Metadata (class names and colours); None draws class ids.
        scale: the output is `scale` times the input size (masks are resized with nearest
            neighbour), which keeps labels readable on small images.
        alpha: opacity of the mask fill.
    """

    def __init__(self, img_rgb: np.ndarray, metadata=None, scale: float = 1.0, alpha: float = 0.5):
        img = np.asarray(img_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"Visualizer wants an RGB uint8 image [H, W, 3], got {img.dtype} {img.shape}")
        if scale <= 0:
            raise ValueError(f"Visualizer scale must be positive, got {scale}")
        self.input_hw = img.shape[:2]
        self.scale = scale
        h, w = (round(s * scale) for s in self.input_hw)
        interp = cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA
        self.canvas = img.copy() if scale == 1 else cv2.resize(img, (w, h), interpolation=interp)
        self.metadata = metadata
        self.alpha = alpha
        self.font_scale = max(0.35, min(h, w) / 700)
        self.thickness = max(1, round(min(h, w) / 400))

    # ---- metadata ------------------------------------------------------------------------
    def _meta(self, key: str) -> list | None:
        return None if self.metadata is None else self.metadata.get(key)

    def _name(self, cls: int, kind: str) -> str:
        names = self._meta(f"{kind}_classes")
        return names[cls] if names is not None and 0 <= cls < len(names) else f"class {cls}"

    def _color(self, cls: int, kind: str) -> tuple[int, int, int]:
        colors = self._meta(f"{kind}_colors")
        if colors is not None and 0 <= cls < len(colors):
            r, g, b = colors[cls]
            return int(r), int(g), int(b)
        return class_color(cls)

    # ---- primitives ----------------------------------------------------------------------
    def _resize_mask(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape != self.input_hw:
            raise ValueError(f"mask of shape {mask.shape} does not match the image {self.input_hw}")
        if self.scale == 1:
            return mask.astype(bool)
        h, w = self.canvas.shape[:2]
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)

    def draw_mask(self, mask: np.ndarray, color: tuple[int, int, int], label: str | None = None) -> None:
        """Fill `mask` (bool [H, W] at input size) with `color`, outline it and write `label`
        at the point of the mask farthest from its border."""
        m = self._resize_mask(mask)
        if not m.any():
            return
        fill = np.array(color, dtype=np.float32)
        self.canvas[m] = (self.canvas[m] * (1 - self.alpha) + fill * self.alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        edge = tuple(int(c * 0.6) for c in color)
        cv2.drawContours(self.canvas, contours, -1, edge, self.thickness, lineType=cv2.LINE_AA)
        if label:
            dist = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            self.draw_text(label, (int(x), int(y)), centered=True)

    def draw_box(self, box_xyxy, color: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = (round(float(v) * self.scale) for v in box_xyxy)
        cv2.rectangle(self.canvas, (x0, y0), (x1, y1), color, self.thickness, lineType=cv2.LINE_AA)

    def draw_text(self, text: str, xy: tuple[int, int], centered: bool = False) -> None:
        """White text on a dark box at `xy` (canvas pixels: its centre, or its bottom-left
        corner), kept inside the image."""
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), base = cv2.getTextSize(text, font, self.font_scale, self.thickness)
        x, y = xy
        if centered:
            x, y = x - tw // 2, y + th // 2
        h, w = self.canvas.shape[:2]
        x, y = int(np.clip(x, 0, max(0, w - tw))), int(np.clip(y, th + 2, h - base))
        y0, y1, x0, x1 = max(0, y - th - 2), min(h, y + base), max(0, x - 1), min(w, x + tw + 1)
        self.canvas[y0:y1, x0:x1] = (self.canvas[y0:y1, x0:x1] * 0.45).astype(np.uint8)  # dark backing box
        cv2.putText(
            self.canvas, text, (x, y), font, self.font_scale, (255, 255, 255), self.thickness, cv2.LINE_AA
        )

    # ---- results -------------------------------------------------------------------------
    def draw_sem_seg(self, sem_seg, area_threshold: int = 0) -> VisImage:
        """`sem_seg`: class ids int [H, W] (255 and ids < 0 are void) or per-class scores
        [K, H, W] (the model's "sem_seg" output, argmax taken). Classes covering at most
        `area_threshold` pixels are not drawn."""
        sem = _numpy(sem_seg)
        if sem.ndim == 3:
            sem = sem.argmax(0)
        sem = sem.astype(np.int64)
        classes, areas = np.unique(sem, return_counts=True)
        for cls, area in sorted(zip(classes.tolist(), areas.tolist()), key=lambda t: -t[1]):
            if cls < 0 or cls == 255 or area <= area_threshold:
                continue
            self.draw_mask(sem == cls, self._color(cls, "stuff"), self._name(cls, "stuff"))
        return VisImage(self.canvas)

    def draw_panoptic_seg(self, panoptic_seg, segments_info: list[dict], area_threshold: int = 0) -> VisImage:
        """`panoptic_seg`: segment ids int [H, W] (0: unlabelled); `segments_info`: list of
        {"id", "category_id", "isthing"}. Stuff is drawn first, then things, each thing with its
        own shade of its class colour."""
        pan = _numpy(panoptic_seg).astype(np.int64)
        ordered = sorted(segments_info, key=lambda s: bool(s.get("isthing")))
        seen: dict[int, int] = {}
        for s in ordered:
            mask = pan == int(s["id"])
            if mask.sum() <= area_threshold:
                continue
            cls = int(s["category_id"])
            if s.get("isthing"):
                k = seen.get(cls, 0)
                seen[cls] = k + 1
                color = _jitter(self._color(cls, "thing"), k)
                label = self._name(cls, "thing")
                if "score" in s:
                    label += f" {float(s['score']) * 100:.0f}%"
            else:
                color, label = self._color(cls, "stuff"), self._name(cls, "stuff")
            self.draw_mask(mask, color, label)
        return VisImage(self.canvas)

    def draw_instance_predictions(self, predictions: Instances) -> VisImage:
        """Instances with `pred_masks` bool [N, H, W], `pred_classes` [N], and optionally
        `scores` [N] and `pred_boxes` (Boxes, XYXY): mask, outline, box and "name 97%"."""
        n = len(predictions)
        if n == 0:
            return VisImage(self.canvas)
        classes = _numpy(predictions.pred_classes).astype(np.int64)
        scores = _numpy(predictions.scores) if predictions.has("scores") else None
        masks = _numpy(predictions.pred_masks).astype(bool) if predictions.has("pred_masks") else None
        boxes = _numpy(predictions.pred_boxes.tensor) if predictions.has("pred_boxes") else None
        order = np.argsort(-(masks.reshape(n, -1).sum(1))) if masks is not None else np.arange(n)  # big first
        seen: dict[int, int] = {}
        for i in order.tolist():
            cls = int(classes[i])
            k = seen.get(cls, 0)
            seen[cls] = k + 1
            color = _jitter(self._color(cls, "thing"), k)
            label = self._name(cls, "thing") + (
                f" {float(scores[i]) * 100:.0f}%" if scores is not None else ""
            )
            if masks is not None:
                self.draw_mask(masks[i], color)
            if boxes is not None:
                self.draw_box(boxes[i], color)
                x0, y0 = (round(float(v) * self.scale) for v in boxes[i][:2])
                self.draw_text(label, (x0, y0 - 2))
            elif masks is not None:
                ys, xs = np.nonzero(masks[i])
                if len(xs):
                    self.draw_text(label, (round(xs.min() * self.scale), round(ys.min() * self.scale) - 2))
        return VisImage(self.canvas)

    def draw_dataset_dict(self, dic: dict) -> VisImage:
        """The ground truth of one dataset dict (Detectron2's format, contiguous class ids): its
        panoptic PNG with `segments_info`, else its instance `annotations`, else its semantic
        label PNG. The image must be the dict's own, at its original size."""
        from ..data.dataset_mappers import annotations_to_masks
        from ..data.detection_utils import read_panoptic_png

        if "pan_seg_file_name" in dic:
            return self.draw_panoptic_seg(read_panoptic_png(dic["pan_seg_file_name"]), dic["segments_info"])
        if "annotations" in dic:
            masks, classes = annotations_to_masks(dic, self.input_hw)
            return self.draw_instance_predictions(
                Instances(self.input_hw, pred_masks=masks.bool(), pred_classes=classes)
            )
        if "sem_seg_file_name" in dic:
            return self.draw_sem_seg(np.asarray(Image.open(dic["sem_seg_file_name"])))
        raise KeyError(
            f"dataset dict of {dic.get('file_name', '?')} has no ground truth to draw "
            "(pan_seg_file_name, annotations or sem_seg_file_name)"
        )
