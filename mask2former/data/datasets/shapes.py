"""The bundled "shapes" dataset: small synthetic scenes with things and stuff, generated
deterministically by this module, in the three formats the project reads.

Each image (128 x 128 by default) is split into textured stuff regions (sky above a wavy horizon;
grass, road and water below it, divided by a slanted boundary), with 2-4 shapes on top (circle,
square, triangle, star; each class has its own colour family, sizes vary, shapes may overlap and
occlude one another). Layout on disk, under `root` (default `datasets/shapes`):

    {train,val}/<name>.png                          RGB images
    panoptic_{train,val}/<name>.png                 COCO panoptic PNGs (id = R + 256 G + 256^2 B)
    panoptic_semseg_{train,val}/<name>.png          semantic labels: contiguous class id, 255 void
    annotations/panoptic_{train,val}.json           COCO panoptic JSON (categories carry `isthing`)
    annotations/instances_{train,val}.json          COCO instances JSON (things only, RLE masks)

Registered names (`register_bundled_datasets(root)`, which reads no file):
    shapes_{train,val}_panoptic   panoptic, with semantic labels and instance JSON for evaluation
    shapes_{train,val}            COCO instances (things only)
    shapes_sem_seg_{train,val}    semantic segmentation (all 8 classes)

Contiguous class ids are shared by the three formats for the things (0-3), followed by the stuff
classes (4-7) in the panoptic and semantic datasets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ..catalog import MetadataCatalog
from .builtin_meta import instance_metadata, panoptic_metadata
from .coco import register_coco_instances, register_sem_seg
from .coco_panoptic import register_coco_panoptic

# (dataset id, name, isthing, colour used for drawing predictions)
SHAPES_CATEGORIES = [
    (1, "circle", 1, (220, 20, 60)),
    (2, "square", 1, (0, 0, 230)),
    (3, "triangle", 1, (250, 170, 30)),
    (4, "star", 1, (255, 0, 255)),
    (5, "sky", 0, (70, 130, 180)),
    (6, "grass", 0, (107, 142, 35)),
    (7, "road", 0, (128, 64, 128)),
    (8, "water", 0, (0, 80, 100)),
]
THING_NAMES = [c[1] for c in SHAPES_CATEGORIES if c[2]]
STUFF_NAMES = [c[1] for c in SHAPES_CATEGORIES if not c[2]]
CATEGORY_ID = {c[1]: c[0] for c in SHAPES_CATEGORIES}
CONTIGUOUS_ID = {c[1]: i for i, c in enumerate(SHAPES_CATEGORIES)}

# Base RGB colour of each thing class; every instance varies it by up to +-THING_COLOR_JITTER.
THING_BASE_COLORS = {
    "circle": (215, 50, 45),
    "square": (40, 70, 210),
    "triangle": (240, 200, 40),
    "star": (190, 60, 200),
}
THING_COLOR_JITTER = 30
IGNORE_LABEL = 255
DEFAULT_SPLITS = {"train": (400, 0), "val": (60, 1)}  # split -> (number of images, seed)


@dataclass(frozen=True)
class SceneConfig:
    """Size and difficulty of the generated scenes."""

    height: int = 128
    width: int = 128
    min_things: int = 2
    max_things: int = 4
    min_radius: int = 11  # half the size of a shape, in pixels
    max_radius: int = 24
    min_visible_fraction: float = 0.6  # an occluded shape keeps at least this much of itself


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def _texture(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A full-image RGB float texture [H, W, 3] for one stuff class."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0.0, 1.0, (h, w, 1)).astype(np.float32)
    if name == "sky":
        top, bottom = np.array([90, 150, 230]), np.array([180, 215, 250])
        t = (yy / h)[..., None]
        img = top * (1 - t) + bottom * t + 4 * noise
    elif name == "grass":
        blades = np.sin(xx * 1.7 + 3 * np.sin(yy * 0.3))[..., None]
        img = np.array([60, 140, 50]) + 18 * blades * np.array([0.4, 1.0, 0.3]) + 14 * noise
    elif name == "road":
        img = np.array([105, 105, 110]) + 10 * noise
        lane = (np.abs(xx - w * rng.uniform(0.3, 0.7)) < 2) & ((yy // 10) % 2 == 0)
        img = np.where(lane[..., None], np.array([235, 235, 235]), img)
    elif name == "water":
        ripples = np.sin(yy * 0.9 + 2 * np.sin(xx * 0.15))[..., None]
        img = np.array([20, 90, 120]) + 22 * ripples * np.array([0.3, 0.8, 1.0]) + 5 * noise
    else:
        raise ValueError(f"unknown stuff class {name!r}")
    return img.astype(np.float32)


def _stuff_layout(cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Region map [H, W] with values 0..R-1 and the stuff class of each region: sky above a wavy
    horizon, then one or two ground classes split by a slanted line."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = h * rng.uniform(0.3, 0.55) + h * 0.05 * np.sin(xx * rng.uniform(0.03, 0.08) + rng.uniform(0, 6))
    regions = np.where(yy < horizon, 0, 1)
    ground = list(rng.permutation(["grass", "road", "water"]))
    names = ["sky", ground[0]]
    if rng.random() < 0.6:
        x0, slope = w * rng.uniform(0.3, 0.7), rng.uniform(-1.5, 1.5)
        regions = np.where((regions == 1) & (xx > x0 + slope * (yy - h)), 2, regions)
        names.append(ground[1])
    return regions, names


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices [P, 2] (x, y) of a square, triangle or star centred at (cx, cy)."""
    if kind == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r * 1.2)
    elif kind == "triangle":
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r * 1.25)
    elif kind == "star":
        t = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.25, r * 0.5)
    else:
        raise ValueError(f"no polygon for shape {kind!r}")
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def _shape_mask(kind: str, cx: float, cy: float, r: float, angle: float, h: int, w: int) -> np.ndarray:
    import cv2  # only for generating the dataset: registering it must not load OpenCV

    mask = np.zeros((h, w), dtype=np.uint8)
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        pts = np.round(_shape_polygon(kind, cx, cy, r, angle)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _place_things(cfg: SceneConfig, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Draw shapes in order (later ones occlude earlier ones) until the layout satisfies
    `min_visible_fraction` for every shape. Returns (class name, visible mask) per shape."""
    h, w = cfg.height, cfg.width
    for _attempt in range(100):
        n = int(rng.integers(cfg.min_things, cfg.max_things + 1))
        full = []
        for _ in range(n):
            kind = THING_NAMES[int(rng.integers(len(THING_NAMES)))]
            r = rng.uniform(cfg.min_radius, cfg.max_radius)
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            full.append((kind, _shape_mask(kind, cx, cy, r, rng.uniform(0, 2 * np.pi), h, w)))
        visible = []
        covered = np.zeros((h, w), dtype=bool)
        for kind, mask in reversed(full):
            visible.append((kind, mask & ~covered))
            covered |= mask
        visible.reverse()
        if all(v.sum() >= cfg.min_visible_fraction * m.sum() for (_, v), (_, m) in zip(visible, full)):
            return visible
    raise RuntimeError("could not place shapes with the requested visibility in 100 attempts")


def _thing_color(kind: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(THING_BASE_COLORS[kind], dtype=np.float32)
    return np.clip(base + rng.uniform(-THING_COLOR_JITTER, THING_COLOR_JITTER, 3), 0, 255)


def generate_scene(cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One scene: (RGB image uint8 [H, W, 3], segments). Each segment is
    {"name", "isthing", "mask" bool [H, W]}; the masks are disjoint and cover the image."""
    h, w = cfg.height, cfg.width
    regions, stuff = _stuff_layout(cfg, rng)
    things = _place_things(cfg, rng)
    image = np.zeros((h, w, 3), dtype=np.float32)
    for i, name in enumerate(stuff):
        sel = regions == i
        image[sel] = _texture(name, h, w, rng)[sel]
    thing_union = np.zeros((h, w), dtype=bool)
    segments = []
    for kind, mask in things:
        shade = 1.0 - 0.25 * np.linspace(0, 1, h, dtype=np.float32)[:, None, None]  # soft vertical shading
        color = _thing_color(kind, rng) * shade + rng.normal(0, 4, (h, w, 3))
        image[mask] = color[mask]
        thing_union |= mask
        segments.append({"name": kind, "isthing": True, "mask": mask})
    for i, name in enumerate(stuff):
        mask = (regions == i) & ~thing_union
        if mask.any():
            segments.append({"name": name, "isthing": False, "mask": mask})
    return np.clip(image, 0, 255).round().astype(np.uint8), segments


# --------------------------------------------------------------------------------------------
# Writing the three formats
# --------------------------------------------------------------------------------------------
def _bbox_xywh(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _categories_json(things_only: bool) -> list[dict]:
    return [
        {"id": cid, "name": name, "isthing": isthing, "color": list(color), "supercategory": "shape"}
        for cid, name, isthing, color in SHAPES_CATEGORIES
        if isthing or not things_only
    ]


def _split_paths(root: str, split: str) -> dict[str, str]:
    return {
        "images": os.path.join(root, split),
        "panoptic": os.path.join(root, f"panoptic_{split}"),
        "semantic": os.path.join(root, f"panoptic_semseg_{split}"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _annotate(image_id: int, stem: str, segments: list[dict], h: int, w: int):
    """Panoptic id map, semantic map, panoptic annotation and instance annotations of one image."""
    pan = np.zeros((h, w), dtype=np.int64)
    sem = np.full((h, w), IGNORE_LABEL, dtype=np.uint8)
    seg_infos, instances = [], []
    for k, s in enumerate(segments):
        cat = CATEGORY_ID[s["name"]]
        seg_id = cat * 1000 + k + 1  # spans the R and G channels of the PNG
        pan[s["mask"]] = seg_id
        sem[s["mask"]] = CONTIGUOUS_ID[s["name"]]
        info = {"id": seg_id, "category_id": cat, "iscrowd": 0, "bbox": _bbox_xywh(s["mask"])}
        info["area"] = int(s["mask"].sum())
        seg_infos.append(info)
        if s["isthing"]:
            instances.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": info["bbox"],
                    "area": info["area"],
                    "segmentation": _rle(s["mask"]),
                }
            )
    pan_ann = {"image_id": image_id, "file_name": stem + ".png", "segments_info": seg_infos}
    return pan, sem, pan_ann, instances


def generate_split(root: str, split: str, num_images: int, seed: int, cfg: SceneConfig | None = None) -> None:
    """Write one split (images, panoptic PNGs + JSON, semantic PNGs, instance JSON) under `root`.
    The same (num_images, seed, cfg) always gives the same files."""
    cfg = cfg or SceneConfig()
    paths = _split_paths(root, split)
    for key in ("images", "panoptic", "semantic"):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    rng = np.random.default_rng(seed)
    images: list[dict] = []
    pan_anns: list[dict] = []
    inst_anns: list[dict] = []
    for image_id in range(1, num_images + 1):
        stem = f"shapes_{split}_{image_id:05d}"
        image, segments = generate_scene(cfg, rng)
        pan, sem, pan_ann, instances = _annotate(image_id, stem, segments, cfg.height, cfg.width)
        Image.fromarray(image).save(os.path.join(paths["images"], stem + ".png"))
        Image.fromarray(_id2rgb(pan)).save(os.path.join(paths["panoptic"], stem + ".png"))
        Image.fromarray(sem).save(os.path.join(paths["semantic"], stem + ".png"))
        images.append({"id": image_id, "file_name": stem + ".png", "height": cfg.height, "width": cfg.width})
        pan_anns.append(pan_ann)
        for inst in instances:
            inst_anns.append({"id": len(inst_anns) + 1, **inst})
    info = {"description": f"mask2former bundled shapes dataset, split {split}, seed {seed}"}
    _write_json(
        paths["panoptic_json"],
        {
            "info": info,
            "images": images,
            "annotations": pan_anns,
            "categories": _categories_json(things_only=False),
        },
    )
    _write_json(
        paths["instances_json"],
        {
            "info": info,
            "images": images,
            "annotations": inst_anns,
            "categories": _categories_json(things_only=True),
        },
    )


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def generate_dataset(root: str, splits: dict[str, tuple[int, int]] | None = None) -> None:
    """Write every split of `splits` ({split: (num_images, seed)}, default DEFAULT_SPLITS)."""
    for split, (num, seed) in (splits or DEFAULT_SPLITS).items():
        generate_split(root, split, num, seed)


def dataset_exists(root: str, splits: tuple[str, ...] = ("train", "val")) -> bool:
    """Whether every split's JSON files are present under `root`."""
    return all(
        os.path.isfile(p)
        for s in splits
        for p in (_split_paths(root, s)["panoptic_json"], _split_paths(root, s)["instances_json"])
    )


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
def default_root() -> str:
    """Where the bundled dataset lives: $DETECTRON2_DATASETS/shapes (default datasets/shapes)."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "shapes")


def register_bundled_datasets(root: str, prefix: str = "shapes") -> None:
    """Register {prefix}_{train,val}_panoptic, {prefix}_{train,val} (instances) and
    {prefix}_sem_seg_{train,val} for the files under `root` (written by `generate_dataset` or
    tools/prepare_shapes_dataset.py). Reads no file; a missing file is reported, with its path,
    when the dataset is first used."""
    for split in ("train", "val"):
        p = _split_paths(root, split)
        register_coco_panoptic(
            f"{prefix}_{split}_panoptic",
            panoptic_metadata(SHAPES_CATEGORIES),
            p["images"],
            p["panoptic"],
            p["panoptic_json"],
            sem_seg_root=p["semantic"],
            instances_json=p["instances_json"],
        )
        register_coco_instances(
            f"{prefix}_{split}", instance_metadata(SHAPES_CATEGORIES), p["instances_json"], p["images"]
        )
        sem_name = f"{prefix}_sem_seg_{split}"
        register_sem_seg(
            sem_name, p["images"], p["semantic"], [c[1] for c in SHAPES_CATEGORIES], IGNORE_LABEL, ".png"
        )
        MetadataCatalog.get(sem_name).set(stuff_colors=[list(c[3]) for c in SHAPES_CATEGORIES])


__all__ = [
    "DEFAULT_SPLITS",
    "SHAPES_CATEGORIES",
    "SceneConfig",
    "dataset_exists",
    "default_root",
    "generate_dataset",
    "generate_scene",
    "generate_split",
    "register_bundled_datasets",
]
