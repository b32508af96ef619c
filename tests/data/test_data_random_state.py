"""The training data pipeline uses no global random state: each sample's augmentation draws from
its own generator, seeded from (seed, position in the stream), so a sample maps the same way
whatever else drew random numbers in the process, and different positions map differently."""

import random

import numpy as np
import pytest
import torch

from mask2former.config import get_cfg
from mask2former.data import DatasetCatalog, build_dataset_mapper
from mask2former.data.build import MapDataset
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets


@pytest.fixture(scope="module")
def shapes_panoptic(tmp_path_factory):
    """Two scenes of the bundled shapes dataset, registered under a name of this module."""
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_split(
        root, "train", 2, seed=5, cfg=SceneConfig(height=64, width=80, min_radius=6, max_radius=12)
    )
    register_bundled_datasets(root, prefix="random_state_shapes")
    yield DatasetCatalog.get("random_state_shapes_train_panoptic")
    for name in [n for n in DatasetCatalog if n.startswith("random_state_shapes")]:
        DatasetCatalog.remove(name)


def _dataset(dicts, mapper_name: str) -> MapDataset:
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", ("random_state_shapes_train_panoptic",),
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 8, "INPUT.DATASET_MAPPER_NAME", mapper_name,
                         "INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TRAIN", (48, 64, 96, 128),
                         "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", (40, 40),
                         "INPUT.COLOR_AUG_SSD", True, "INPUT.IMAGE_SIZE", 48])  # fmt: skip
    return MapDataset(dicts, build_dataset_mapper(cfg, True), seed=11)


def _other_random_calls() -> None:
    random.random()
    np.random.rand(3)
    torch.rand(2)
    random.seed(123)  # even reseeding the global generators changes nothing
    np.random.seed(456)
    torch.manual_seed(789)


def _same(a: dict, b: dict) -> bool:
    return (
        torch.equal(a["image"], b["image"])
        and torch.equal(a["instances"].gt_masks, b["instances"].gt_masks)
        and torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
    )


@pytest.mark.parametrize("mapper_name", ["mask_former_panoptic", "coco_panoptic_lsj"])
def test_sample_does_not_depend_on_other_random_calls(shapes_panoptic, mapper_name):
    dataset = _dataset(shapes_panoptic, mapper_name)
    first = dataset[(7, 0)]
    _other_random_calls()
    again = dataset[(7, 0)]
    assert _same(first, again)
    # The global generators were not touched by mapping: their next draws are the reseeded ones.
    random.seed(1)
    expected = random.random()
    random.seed(1)
    dataset[(8, 0)]
    assert random.random() == expected


@pytest.mark.parametrize("mapper_name", ["mask_former_panoptic", "coco_panoptic_lsj"])
def test_positions_draw_different_augmentations(shapes_panoptic, mapper_name):
    dataset = _dataset(shapes_panoptic, mapper_name)
    images = [dataset[(pos, 0)]["image"] for pos in range(6)]
    distinct = {(tuple(im.shape), im.numpy().tobytes()) for im in images}
    assert len(distinct) >= 4  # (resize, crop, flip, colour draws all agreeing is rare)
