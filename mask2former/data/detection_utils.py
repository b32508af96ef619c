"""Decoding images and annotations into arrays, with errors that name the file.

Images are decoded as Detectron2 does: EXIF orientation applied, then converted to the
requested format ("RGB", "BGR" or "L"); grayscale, palette, RGBA and 16-bit images are converted
with PIL. PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is left in force.
"""

from __future__ import annotations

import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageOps


class DatasetFormatError(ValueError):
    """An annotation or image that cannot be used; the message names the file."""


_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _refuse_special_file(file_name, what: str) -> None:
    """A FIFO, device or socket is refused before `open` (which could block forever)."""
    if isinstance(file_name, (str, os.PathLike)):
        from .path_check import require_regular_file  # path_check imports this module

        require_regular_file(os.fspath(file_name), what)


def read_image(file_name: str, format: str = "RGB") -> np.ndarray:
    """Decode an image file. Returns uint8 [H, W, 3] in `format` ("RGB" or "BGR") or [H, W, 1]
    for "L". Raises DatasetFormatError (naming the file) for a missing, corrupt or truncated file."""
    if format not in ("RGB", "BGR", "L"):
        raise ValueError(f"Unsupported image format {format!r}; use 'RGB', 'BGR' or 'L'")
    _refuse_special_file(file_name, "Image file")
    try:
        with Image.open(file_name) as img:
            img.load()  # decode now, so a truncated file fails here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I") and format != "L":
                # 16/32-bit grayscale: PIL's convert("RGB") clips at 255, as Detectron2 does.
                img = img.convert("L")
            img = img.convert("L" if format == "L" else "RGB")
            arr = np.array(img)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: {file_name}") from e
    except _IMAGE_ERRORS as e:
        raise DatasetFormatError(f"Cannot decode image {file_name}: {e}") from e
    if format == "BGR":
        arr = arr[:, :, ::-1]
    if format == "L":
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def read_label_png(file_name: str) -> np.ndarray:
    """A label image (semantic ids, 8 or 16 bit, palette indices kept) as int64 [H, W]."""
    _refuse_special_file(file_name, "Label file")
    try:
        with Image.open(file_name) as img:
            img.load()
            if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                raise DatasetFormatError(
                    f"Label image {file_name} has mode {img.mode!r}; expected a single-channel PNG"
                )
            arr = np.asarray(img).astype(np.int64)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Label file not found: {file_name}") from e
    except _IMAGE_ERRORS as e:
        raise DatasetFormatError(f"Cannot decode label image {file_name}: {e}") from e
    return arr


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Panoptic PNG colours [H, W, 3] -> segment ids [H, W] (id = R + 256 G + 256^2 B), int64."""
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] -> panoptic PNG colours uint8 [H, W, 3]."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_panoptic_png(file_name: str) -> np.ndarray:
    """A COCO-format panoptic PNG as segment ids int64 [H, W]."""
    _refuse_special_file(file_name, "Panoptic PNG")
    try:
        with Image.open(file_name) as img:
            img.load()
            arr = np.asarray(img.convert("RGB"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Panoptic PNG not found: {file_name}") from e
    except _IMAGE_ERRORS as e:
        raise DatasetFormatError(f"Cannot decode panoptic PNG {file_name}: {e}") from e
    return rgb2id(arr)


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """The decoded image must match the size the annotation file states."""
    h, w = image.shape[:2]
    if (
        "height" in dataset_dict
        and "width" in dataset_dict
        and (dataset_dict["height"], dataset_dict["width"]) != (h, w)
    ):
        raise DatasetFormatError(
            f"Image {dataset_dict.get('file_name')} is {h}x{w} but its annotation says "
            f"{dataset_dict['height']}x{dataset_dict['width']}"
        )
    dataset_dict.setdefault("height", h)
    dataset_dict.setdefault("width", w)


def segmentation_to_mask(segm, height: int, width: int, source: str = "") -> np.ndarray:
    """A COCO segmentation (polygon list, uncompressed RLE with a counts list, or compressed RLE)
    -> bool [H, W]."""
    if isinstance(segm, list):
        rle = _polygons_to_rle(segm, height, width, source)
        if rle is None:  # only degenerate polygons (fewer than 3 points)
            return np.zeros((height, width), dtype=bool)
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        rle = _checked_rle(segm, height, width, source)
    elif isinstance(segm, np.ndarray):
        if segm.shape != (height, width):
            raise DatasetFormatError(
                f"Mask of shape {segm.shape} in {source} does not match image {height}x{width}"
            )
        return segm.astype(bool)
    else:
        raise DatasetFormatError(f"Unknown segmentation format {type(segm).__name__} in {source}")
    try:
        if isinstance(rle, dict) and isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, height, width)
        return mask_util.decode(rle).astype(bool)
    except (ValueError, OverflowError) as e:  # pycocotools: "Invalid RLE mask representation"
        raise DatasetFormatError(f"Cannot decode the RLE in {source}: {e}") from e


def _polygons_to_rle(segm: list, height: int, width: int, source: str) -> dict | None:
    """Checked polygons [x0, y0, x1, y1, ...] -> their merged RLE; None when every polygon has
    fewer than 3 points."""
    try:
        polys = [np.asarray(p) for p in segm]
    except ValueError as e:  # ragged nesting
        raise DatasetFormatError(f"A polygon in {source} is not a list of numbers: {e}") from e
    if any(p.ndim != 1 or p.dtype.kind not in "iuf" or len(p) % 2 or not np.isfinite(p).all() for p in polys):
        raise DatasetFormatError(
            f"A polygon in {source} is not a flat list of finite [x, y] pairs (odd count or nested)"
        )
    polys = [p for p in polys if len(p) >= 6]
    for p in polys:  # pycocotools crashes the process on huge coordinates (1e12)
        xs, ys = p[0::2], p[1::2]
        if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
            raise DatasetFormatError(
                f"A polygon in {source} has coordinates far outside the {height}x{width} image"
            )
    if not polys:
        return None
    return mask_util.merge(mask_util.frPyObjects([p.tolist() for p in polys], height, width))


def _checked_rle(segm: dict, height: int, width: int, source: str) -> dict:
    """An RLE {"size", "counts"} checked against the image size; string counts as bytes."""
    if list(segm["size"]) != [height, width]:
        raise DatasetFormatError(
            f"RLE of size {segm['size']} in {source} does not match image {height}x{width}"
        )
    counts = segm["counts"]
    if isinstance(counts, list) and (
        not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width
    ):
        raise DatasetFormatError(
            f"RLE counts in {source} are not non-negative integers summing to {height}*{width}"
        )
    if isinstance(counts, str):
        return {"size": segm["size"], "counts": counts.encode("ascii")}
    return segm


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge output size: shortest side -> `short`, longest side at
    most `max_size`, rounded half up; at least 1 pixel (a 2x3000 image capped at max_size would
    otherwise round to height 0)."""
    scale = short / min(h, w)
    newh, neww = h * scale, w * scale
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


__all__ = [
    "DatasetFormatError",
    "check_image_size",
    "id2rgb",
    "read_image",
    "read_label_png",
    "read_panoptic_png",
    "rgb2id",
    "segmentation_to_mask",
    "shortest_edge_size",
]
