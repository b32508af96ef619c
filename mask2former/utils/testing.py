"""Helpers for the test suite (like `detectron2.utils.testing`): the reference fixtures, small
configs, small datasets written to a folder, and a toy model/trainer for the engine tests.

Nothing here imports pytest at module level: `require_file` imports it when a file is absent.

Reference fixtures (recorded from the original implementation) live in `shared/fixtures/` and
`shared/reference/` beside the checkout (`<repo>/../shared/`); `MASK2FORMER_FIXTURES` and
`MASK2FORMER_REFERENCE` point elsewhere. A missing file skips the test that needs it, unless
`MASK2FORMER_REQUIRE_FIXTURES=1` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from mask2former.config import get_cfg
from mask2former.engine.hook_base import HookBase
from mask2former.engine.trainer import Trainer
from mask2former.modeling.registry import META_ARCH_REGISTRY
from mask2former.utils import dist as dist_utils

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
TINY_CONFIG = REPO / "configs" / "shapes" / "maskformer2_R18_tiny_test.yaml"

REQUIRE_FIXTURES_ENV = "MASK2FORMER_REQUIRE_FIXTURES"


# --------------------------------------------------------------------------------------------
# Reference fixtures
# --------------------------------------------------------------------------------------------
def fixtures_dir() -> Path:
    """`MASK2FORMER_FIXTURES`, else `<repo>/../shared/fixtures`."""
    return Path(os.environ.get("MASK2FORMER_FIXTURES", REPO.parent / "shared" / "fixtures"))


def reference_dir() -> Path:
    """`MASK2FORMER_REFERENCE`, else `<repo>/../shared/reference`."""
    return Path(os.environ.get("MASK2FORMER_REFERENCE", REPO.parent / "shared" / "reference"))


def fixtures_required() -> bool:
    return os.environ.get(REQUIRE_FIXTURES_ENV) == "1"


def require_file(path: Path, *, module_level: bool = False) -> Path:
    """`path` if it is a file; otherwise skip the calling test, or the whole test module when
    `module_level` (fail instead when MASK2FORMER_REQUIRE_FIXTURES=1)."""
    if path.is_file():
        return path
    import pytest

    message = f"reference file {path} not found (set MASK2FORMER_FIXTURES / MASK2FORMER_REFERENCE)"
    if fixtures_required():
        pytest.fail(f"{message}; {REQUIRE_FIXTURES_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


def load_fixture(name: str = "reference_tiny_r18.pt") -> dict:
    """A fixture file of `fixtures_dir()`, loaded with weights_only=True."""
    return torch.load(require_file(fixtures_dir() / name), weights_only=True)


def unpack_state_dict(fixture: dict) -> dict[str, torch.Tensor]:
    """The fixture's full state dict (int8-packed tensors expanded exactly)."""
    packed = {k: v["int8"].float() * 2.0 ** v["exp"] for k, v in fixture["state_dict_packed"].items()}
    return {**fixture["state_dict_float"], **packed}


# --------------------------------------------------------------------------------------------
# Small configs
# --------------------------------------------------------------------------------------------
def tiny_cfg(num_classes: int = 5, thing_ids: tuple[int, ...] = (0, 1, 2)):
    """A small Mask2Former config (ResNet-18, 32-d heads) on CPU, with metadata registered
    under the dataset name "tiny_test" (`thing_ids` are contiguous thing class ids)."""
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


def tiny_shapes_cfg(*opts):
    """configs/shapes/maskformer2_R18_tiny_test.yaml with `opts` (KEY, VALUE, ...) merged."""
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(list(opts))
    return cfg


def shape_scenes(n: int, h: int = 64, w: int = 80, seed: int = 0) -> list[np.ndarray]:
    """`n` RGB images [h, w, 3] uint8 of the bundled shapes dataset."""
    from mask2former.data.datasets.shapes import SceneConfig, generate_scene

    rng = np.random.default_rng(seed)
    return [
        generate_scene(SceneConfig(height=h, width=w, min_radius=6, max_radius=12), rng)[0] for _ in range(n)
    ]


# --------------------------------------------------------------------------------------------
# Small datasets in COCO formats
# --------------------------------------------------------------------------------------------
OBJ_COLOR = (255, 0, 255)  # painted only on the object's pixels
IMAGE_H, IMAGE_W = 48, 64


def unique_dataset_name(prefix: str) -> str:
    """`prefix_<i>` for the first i not yet in DatasetCatalog."""
    from mask2former.data import DatasetCatalog

    i = 0
    while f"{prefix}_{i}" in DatasetCatalog:
        i += 1
    return f"{prefix}_{i}"


def make_coco_instances(root: Path) -> tuple[str, str, np.ndarray]:
    """One image with: a polygon object (the painted square), an RLE object, a crowd region.
    Returns (json path, image dir, object mask bool [H, W])."""
    import pycocotools.mask as mask_util
    from PIL import Image

    H, W = IMAGE_H, IMAGE_W
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)  # never 255 in channel 0 and 2 together
    obj = np.zeros((H, W), bool)
    obj[10:30, 20:44] = True
    img[obj] = OBJ_COLOR
    Image.fromarray(img).save(img_dir / "a.png")
    rle_mask = np.zeros((H, W), np.uint8)
    rle_mask[35:45, 2:12] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((H, W), np.uint8)
    crowd[0:5, 50:60] = 1
    crle = mask_util.encode(np.asfortranarray(crowd))
    crle["counts"] = crle["counts"].decode("ascii")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "cat3"}, {"id": 9, "name": "cat9"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 0,
                "area": 480.0,
                "bbox": [20, 10, 24, 20],
                "segmentation": [[20, 10, 44, 10, 44, 30, 20, 30]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 9,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [2, 35, 10, 10],
                "segmentation": rle,
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 9,
                "iscrowd": 1,
                "area": 50.0,
                "bbox": [50, 0, 10, 5],
                "segmentation": crle,
            },
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(img_dir), obj


LABELME_CATEGORIES = [
    {"id": 0, "name": "_background_", "supercategory": None},
    {"id": 1, "name": "bottle", "supercategory": None},
    {"id": 4, "name": "cup", "supercategory": None},
]


def make_labelme_coco(
    root: Path,
    n_images: int = 6,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    use_background: bool = False,
) -> tuple[str, str]:
    """A COCO instances export as labelme2coco writes it: annotation ids from 0, a
    `_background_` category with id 0 (used by one annotation only when `use_background`), a
    non-contiguous category id (4), polygon segmentations, and a last image without
    annotations. Objects are drawn on the JPEGs ("bottle": tall blue rectangles, "cup": red
    disks approximated by 16-gons) so that a model can learn them. Returns (json path, image dir)."""
    import pycocotools.mask as mask_util
    from PIL import Image, ImageDraw

    h, w = size
    rng = np.random.default_rng(seed)
    img_dir = root / "JPEGImages"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(n_images):
        img = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        shapes = [] if i == n_images - 1 else [1, 4, int(rng.choice([1, 4]))]
        for k, cat in enumerate(shapes):
            cx, cy = (k + 0.5) * w / 3 + rng.integers(-6, 7), h / 2 + rng.integers(-h // 6, h // 6 + 1)
            if cat == 1:
                bw, bh = rng.integers(8, 14), rng.integers(24, 34)
                poly: list[float] = [cx - bw, cy - bh, cx + bw, cy - bh, cx + bw, cy + bh, cx - bw, cy + bh]
            else:
                r = rng.integers(10, 16)
                angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
            poly = [float(v) for v in poly]
            draw.polygon(poly, fill=(30, 60, 220) if cat == 1 else (220, 40, 30))
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            category = 0 if (use_background and i == 0 and k == 0) else cat
            annotations.append(
                {
                    "id": len(annotations),  # labelme2coco numbers annotations from 0
                    "image_id": i,
                    "category_id": category,
                    "segmentation": [poly],
                    "area": float(mask_util.area(mask_util.merge(mask_util.frPyObjects([poly], h, w)))),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
        img.save(img_dir / f"{i:03d}.jpg", quality=95)
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "height": h, "width": w, "license": None})
    data = {
        "info": {"description": "labelme2coco export"},
        "licenses": [],
        "images": images,
        "type": "instances",
        "annotations": annotations,
        "categories": LABELME_CATEGORIES,
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return str(path), str(img_dir)


def make_coco_panoptic(root: Path) -> dict:
    """Two images with a panoptic PNG each: a thing (the painted square), a stuff region, a crowd
    region, and void (id 0) elsewhere."""
    from PIL import Image

    from mask2former.data.detection_utils import id2rgb

    H, W = IMAGE_H, IMAGE_W
    img_dir, pan_dir = root / "images", root / "panoptic"
    img_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    anns, images = [], []
    for k in range(2):
        rng = np.random.default_rng(k)
        img = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)
        ids = np.zeros((H, W), np.int64)
        ids[:, : W // 2 - 10] = 2000 + k  # stuff "sky"
        ids[10:30, 20:44] = 300 + 256 * 5  # thing "dog"
        ids[40:46, 50:60] = 7  # crowd of "dog"
        img[ids == 300 + 256 * 5] = OBJ_COLOR
        Image.fromarray(img).save(img_dir / f"{k:03d}.jpg", quality=100)
        Image.fromarray(id2rgb(ids)).save(pan_dir / f"{k:03d}.png")
        images.append({"id": k, "file_name": f"{k:03d}.jpg", "height": H, "width": W})
        anns.append(
            {
                "image_id": k,
                "file_name": f"{k:03d}.png",
                "segments_info": [
                    {"id": 2000 + k, "category_id": 40, "iscrowd": 0},
                    {"id": 300 + 256 * 5, "category_id": 18, "iscrowd": 0},
                    {"id": 7, "category_id": 18, "iscrowd": 1},
                ],
            }
        )
    cats = [{"id": 18, "name": "dog", "isthing": 1}, {"id": 40, "name": "sky", "isthing": 0}]
    js = root / "panoptic.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"image_root": str(img_dir), "panoptic_root": str(pan_dir), "panoptic_json": str(js)}


# --------------------------------------------------------------------------------------------
# A toy model and trainer for the engine tests
# --------------------------------------------------------------------------------------------
# Training stops with SIGKILL right after this iteration (all hooks before it, checkpointing
# included, have run): the kill-and-resume test kills at a chosen iteration, not after a delay.
KILL_AT_ITER_ENV = "MASK2FORMER_TEST_KILL_AT_ITER"


@META_ARCH_REGISTRY.register()
class EngineToyModel(nn.Module):
    """Two convs predicting a target image; uses dropout and torch.rand, so exact resume
    needs the RNG states. `nan_at_call` makes the given forward call return a NaN loss."""

    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(8, 1, 3, padding=1)
        )
        self.nan_at_call: int | None = None
        self.nan_term = "loss_reg"
        self.calls = 0

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        device = self.net[0].weight.device
        images = torch.stack([x["image"] for x in batched_inputs]).to(device)  # [B, 3, H, W]
        targets = torch.stack([x["target"] for x in batched_inputs]).to(device)  # [B, 1, H, W]
        pred = self.net(images + 0.01 * torch.rand_like(images))
        losses = {
            "loss_fit": ((pred - targets) ** 2).mean(),
            "loss_reg": 1e-3 * sum((p**2).sum() for p in self.parameters()),
        }
        if self.calls == self.nan_at_call:
            losses[self.nan_term] = losses[self.nan_term] * float("nan")
        return losses


class ToyLoader:
    """Infinite, deterministic, resumable: batch i of rank r depends only on (SEED, r, i)."""

    def __init__(self, cfg):
        self.seed = max(cfg.SEED, 0)
        self.batch_size = cfg.SOLVER.IMS_PER_BATCH // dist_utils.get_world_size()
        self.rank = dist_utils.get_rank()
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.rank * 1009 + self.position)
            batch = []
            for _ in range(self.batch_size):
                image = torch.rand(3, 12, 12, generator=g)
                batch.append({"image": image, "target": image.mean(0, keepdim=True) ** 2})
            self.position += 1
            yield batch


class DumpWeights(HookBase):
    """After training, writes each rank's weights to OUTPUT_DIR/weights_rank<r>.pt."""

    def after_train(self) -> None:
        trainer = cast(Trainer, self.trainer)
        state = {k: v.detach().cpu() for k, v in trainer.checkpointer.model.state_dict().items()}
        torch.save(state, os.path.join(trainer.cfg.OUTPUT_DIR, f"weights_rank{dist_utils.get_rank()}.pt"))


class KillAtIteration(HookBase):
    """SIGKILLs this process right after iteration `iteration` (a crash the trainer cannot see)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


class ToyTrainer(Trainer):
    """Trains EngineToyModel on ToyLoader; adds DumpWeights, and KillAtIteration when
    MASK2FORMER_TEST_KILL_AT_ITER is set."""

    @classmethod
    def build_train_loader(cls, cfg):
        return ToyLoader(cfg)

    def build_hooks(self):
        hooks = [*super().build_hooks(), DumpWeights()]
        if KILL_AT_ITER_ENV in os.environ:
            hooks.append(KillAtIteration(int(os.environ[KILL_AT_ITER_ENV])))
        return hooks


def toy_cfg(output_dir, **overrides):
    """A frozen config for EngineToyModel on CPU; overrides as {"SOLVER.MAX_ITER": 5}."""
    cfg = get_cfg()
    base = {
        "MODEL.META_ARCHITECTURE": "EngineToyModel",
        "MODEL.DEVICE": "cpu",
        "OUTPUT_DIR": str(output_dir),
        "SEED": 7,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 10,
        "SOLVER.CHECKPOINT_PERIOD": 3,
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.STEPS": (6,),
    }
    base.update(overrides)
    cfg.merge_from_list([x for kv in base.items() for x in kv])
    cfg.freeze()
    return cfg


def write_cfg_yaml(path, **overrides) -> str:
    """`toy_cfg(OUTPUT_DIR, **overrides)` dumped to `path`; returns the path."""
    cfg = toy_cfg(overrides.pop("OUTPUT_DIR"), **overrides)
    Path(path).write_text(cfg.dump())
    return str(path)


def train_net_command(*argv: str) -> list[str]:
    """A python command running tools/train_net.py's cli with ToyTrainer."""
    code = (
        f"import sys; sys.path.insert(0, {str(TOOLS)!r}); import train_net; "
        "from mask2former.utils.testing import ToyTrainer; train_net.cli(sys.argv[1:], ToyTrainer)"
    )
    return [sys.executable, "-c", code, *argv]


def load_weights_file(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def fail_on_rank_1(pid_dir: str) -> None:
    """A `launch` worker for the failure test: each rank writes its pid to `pid_dir`; rank 0
    blocks in a collective, rank 1 raises."""
    import torch.distributed as dist

    rank = dist.get_rank()
    with open(os.path.join(pid_dir, str(os.getpid())), "w") as f:
        f.write(str(rank))
    if rank == 1:
        time.sleep(0.5)
        raise ValueError("injected failure on purpose")
    dist.barrier()
    time.sleep(600)
