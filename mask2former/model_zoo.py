"""The model zoo: the original project's published configs with their task, dataset, backbone,
schedule, reported results and weights URL, and the config a command line will run.

    python -m mask2former.model_zoo                                  # every config, as a table
    python -m mask2former.model_zoo --task semantic --dataset ade20k # filtered
    python -m mask2former.model_zoo --show coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        SOLVER.IMS_PER_BATCH 8                                       # the merged config, as YAML

(`tools/browse_configs.py` is the same command.) Results and weights are those the original
project reports in its MODEL_ZOO.md; "(ms+flip)" is with multi-scale + flip test-time augmentation
(TEST.AUG.ENABLED True). The weights load with MODEL.WEIGHTS <url>.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ZooEntry(NamedTuple):
    config: str  # relative to configs/
    task: str  # panoptic, instance or semantic
    backbone: str
    schedule: str
    results: dict[str, float]  # as reported by the original project
    weights: str  # URL of the published weights

    @property
    def dataset(self) -> str:
        return self.config.split("/")[0]


MODEL_ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "panoptic",
        "R50",
        "50 ep",
        {"PQ": 51.9, "AP": 41.7, "mIoU": 61.7},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml",
        "panoptic",
        "R101",
        "50 ep",
        {"PQ": 52.6, "AP": 42.6, "mIoU": 62.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R101_bs16_50ep/model_final_b807bd.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
        "panoptic",
        "Swin-T",
        "50 ep",
        {"PQ": 53.2, "AP": 43.3, "mIoU": 63.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_tiny_bs16_50ep/model_final_9fd0ae.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml",
        "panoptic",
        "Swin-S",
        "50 ep",
        {"PQ": 54.6, "AP": 44.7, "mIoU": 64.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_small_bs16_50ep/model_final_a407fd.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml",
        "panoptic",
        "Swin-B",
        "50 ep",
        {"PQ": 55.1, "AP": 45.2, "mIoU": 65.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_base_384_bs16_50ep/model_final_9d7f02.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
        "panoptic",
        "Swin-B (IN21k)",
        "50 ep",
        {"PQ": 56.4, "AP": 46.3, "mIoU": 67.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_54b88a.pkl",
    ),
    ZooEntry(
        "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
        "panoptic",
        "Swin-L (IN21k)",
        "100 ep",
        {"PQ": 57.8, "AP": 48.6, "mIoU": 67.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_f07440.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "instance",
        "R50",
        "50 ep",
        {"AP": 43.7, "Boundary AP": 30.6},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/maskformer2_R101_bs16_50ep.yaml",
        "instance",
        "R101",
        "50 ep",
        {"AP": 44.2, "Boundary AP": 31.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_R101_bs16_50ep/model_final_eba159.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
        "instance",
        "Swin-T",
        "50 ep",
        {"AP": 45.0, "Boundary AP": 31.8},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_swin_tiny_bs16_50ep/model_final_86143f.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml",
        "instance",
        "Swin-S",
        "50 ep",
        {"AP": 46.3, "Boundary AP": 32.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_swin_small_bs16_50ep/model_final_1e7f22.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml",
        "instance",
        "Swin-B",
        "50 ep",
        {"AP": 46.7, "Boundary AP": 33.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_swin_base_384_bs16_50ep/model_final_f6e0f6.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
        "instance",
        "Swin-B (IN21k)",
        "50 ep",
        {"AP": 48.1, "Boundary AP": 34.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_83d103.pkl",
    ),
    ZooEntry(
        "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
        "instance",
        "Swin-L (IN21k)",
        "100 ep",
        {"AP": 50.1, "Boundary AP": 36.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_e5f453.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml",
        "panoptic",
        "R50",
        "90k iter",
        {"PQ": 62.1, "AP": 37.3, "mIoU": 77.5},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_R50_bs16_90k/model_final_4ab90c.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/maskformer2_R101_bs16_90k.yaml",
        "panoptic",
        "R101",
        "90k iter",
        {"PQ": 62.4, "AP": 37.7, "mIoU": 78.6},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_R101_bs16_90k/model_final_04d286.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
        "panoptic",
        "Swin-T",
        "90k iter",
        {"PQ": 63.9, "AP": 39.1, "mIoU": 80.5},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_swin_tiny_bs16_90k/model_final_ceba0f.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
        "panoptic",
        "Swin-S",
        "90k iter",
        {"PQ": 64.8, "AP": 40.7, "mIoU": 81.8},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_swin_small_bs16_90k/model_final_23efb7.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
        "panoptic",
        "Swin-B (IN21k)",
        "90k iter",
        {"PQ": 66.1, "AP": 42.8, "mIoU": 82.7},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_fa840f.pkl",
    ),
    ZooEntry(
        "cityscapes/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
        "panoptic",
        "Swin-L (IN21k)",
        "90k iter",
        {"PQ": 66.6, "AP": 43.6, "mIoU": 82.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/panoptic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_064788.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml",
        "instance",
        "R50",
        "90k iter",
        {"AP": 37.4, "AP50": 61.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_R50_bs16_90k/model_final_01a8ed.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/maskformer2_R101_bs16_90k.yaml",
        "instance",
        "R101",
        "90k iter",
        {"AP": 38.5, "AP50": 63.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_R101_bs16_90k/model_final_c2b8c8.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
        "instance",
        "Swin-T",
        "90k iter",
        {"AP": 39.7, "AP50": 66.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_swin_tiny_bs16_90k/model_final_6a63f8.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
        "instance",
        "Swin-S",
        "90k iter",
        {"AP": 41.8, "AP50": 70.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_swin_small_bs16_90k/model_final_974824.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
        "instance",
        "Swin-B (IN21k)",
        "90k iter",
        {"AP": 42.0, "AP50": 68.8},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_7a3b6d.pkl",
    ),
    ZooEntry(
        "cityscapes/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
        "instance",
        "Swin-L (IN21k)",
        "90k iter",
        {"AP": 43.7, "AP50": 71.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/instance/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_dfa862.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml",
        "semantic",
        "R50",
        "90k iter",
        {"mIoU": 79.4, "mIoU (ms+flip)": 82.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_R50_bs16_90k/model_final_cc1b1f.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
        "semantic",
        "R101",
        "90k iter",
        {"mIoU": 80.1, "mIoU (ms+flip)": 81.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_R101_bs16_90k/model_final_257ce8.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml",
        "semantic",
        "Swin-T",
        "90k iter",
        {"mIoU": 82.1, "mIoU (ms+flip)": 83.0},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_swin_tiny_bs16_90k/model_final_2d58d4.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/swin/maskformer2_swin_small_bs16_90k.yaml",
        "semantic",
        "Swin-S",
        "90k iter",
        {"mIoU": 82.6, "mIoU (ms+flip)": 83.6},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_swin_small_bs16_90k/model_final_fa26ae.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml",
        "semantic",
        "Swin-B (IN21k)",
        "90k iter",
        {"mIoU": 83.3, "mIoU (ms+flip)": 84.5},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_1c6b65.pkl",
    ),
    ZooEntry(
        "cityscapes/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
        "semantic",
        "Swin-L (IN21k)",
        "90k iter",
        {"mIoU": 83.3, "mIoU (ms+flip)": 84.3},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_17c1ee.pkl",
    ),
    ZooEntry(
        "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "panoptic",
        "R50",
        "160k iter",
        {"PQ": 39.7, "AP": 26.5, "mIoU": 46.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/panoptic/maskformer2_R50_bs16_160k/model_final_5c90d4.pkl",
    ),
    ZooEntry(
        "ade20k/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
        "panoptic",
        "Swin-L (IN21k)",
        "160k iter",
        {"PQ": 48.1, "AP": 34.2, "mIoU": 54.5},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/panoptic/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_e0c58e.pkl",
    ),
    ZooEntry(
        "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
        "instance",
        "R50",
        "160k iter",
        {"AP": 26.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/instance/maskformer2_R50_bs16_160k/model_final_67e945.pkl",
    ),
    ZooEntry(
        "ade20k/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
        "instance",
        "R50",
        "160k iter",
        {"AP": 34.9},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/instance/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_92dae9.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "semantic",
        "R50",
        "160k iter",
        {"mIoU": 47.2, "mIoU (ms+flip)": 49.2},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_R50_bs16_160k/model_final_500878.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
        "semantic",
        "R101",
        "160k iter",
        {"mIoU": 47.8, "mIoU (ms+flip)": 50.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_R101_bs16_90k/model_final_0d68be.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_tiny_bs16_160k.yaml",
        "semantic",
        "Swin-T",
        "160k iter",
        {"mIoU": 47.7, "mIoU (ms+flip)": 49.6},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_tiny_bs16_160k/model_final_5274a6.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_small_bs16_160k.yaml",
        "semantic",
        "Swin-S",
        "160k iter",
        {"mIoU": 51.3, "mIoU (ms+flip)": 52.4},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_small_bs16_160k/model_final_011c6d.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_base_384_bs16_160k_res640.yaml",
        "semantic",
        "Swin-B",
        "160k iter",
        {"mIoU": 52.4, "mIoU (ms+flip)": 53.7},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_base_384_bs16_160k_res640/model_final_503e96.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640.yaml",
        "semantic",
        "Swin-B (IN21k)",
        "160k iter",
        {"mIoU": 53.9, "mIoU (ms+flip)": 55.1},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_base_IN21k_384_bs16_160k_res640/model_final_7e47bf.pkl",
    ),
    ZooEntry(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
        "semantic",
        "Swin-L (IN21k)",
        "160k iter",
        {"mIoU": 56.1, "mIoU (ms+flip)": 57.3},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl",
    ),
    ZooEntry(
        "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml",
        "panoptic",
        "R50",
        "300k iter",
        {"PQ": 36.3, "mIoU": 50.7},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/mapillary_vistas/panoptic/maskformer_R50_bs16_300k/model_final_4e9874.pkl",
    ),
    ZooEntry(
        "mapillary-vistas/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
        "panoptic",
        "Swin-L (IN21k)",
        "300k iter",
        {"PQ": 45.5, "mIoU": 60.8},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/mapillary_vistas/panoptic/maskformer2_swin_large_IN21k_384_bs16_300k/model_final_132c71.pkl",
    ),
    # The original MODEL_ZOO.md links this entry as maskformer_R50_bs16_300k.yaml; its config file is this one.
    ZooEntry(
        "mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml",
        "semantic",
        "R50",
        "300k iter",
        {"mIoU": 57.4, "mIoU (ms+flip)": 59.0},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/mapillary_vistas/semantic/maskformer_R50_bs16_300k/model_final_6c66d0.pkl",
    ),
    ZooEntry(
        "mapillary-vistas/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
        "semantic",
        "Swin-L (IN21k)",
        "300k iter",
        {"mIoU": 63.2, "mIoU (ms+flip)": 64.7},
        "https://dl.fbaipublicfiles.com/maskformer/mask2former/mapillary_vistas/semantic/maskformer2_swin_large_IN21k_384_bs16_300k/model_final_90ee2d.pkl",
    ),
)
_BY_CONFIG = {e.config: e for e in MODEL_ZOO}
_TASK_FOLDERS = {"panoptic-segmentation": "panoptic", "instance-segmentation": "instance",
                 "semantic-segmentation": "semantic"}  # fmt: skip


def all_configs(configs_dir: str = CONFIGS_DIR) -> list[str]:
    """Every runnable config under `configs_dir` (the `Base-*.yaml` files they include are not),
    relative to it, sorted."""
    if not os.path.isdir(configs_dir):
        raise FileNotFoundError(f"config folder {configs_dir} not found (run from a checkout of the project)")
    found = []
    for root, _, files in os.walk(configs_dir):
        for f in files:
            if f.endswith(".yaml") and not f.startswith("Base-"):
                found.append(os.path.relpath(os.path.join(root, f), configs_dir))
    return sorted(found)


def describe(config: str) -> ZooEntry:
    """The zoo entry of `config` (relative to configs/), or one with what its path tells and no
    reported results for configs the original did not publish weights for."""
    if config in _BY_CONFIG:
        return _BY_CONFIG[config]
    parts = config.split("/")
    task = next((t for folder, t in _TASK_FOLDERS.items() if folder in parts), "panoptic")
    return ZooEntry(config, task, "-", "-", {}, "")


def resolve(config: str, configs_dir: str = CONFIGS_DIR) -> str:
    """A config file path: as given when it exists, else relative to `configs_dir`."""
    if os.path.isfile(config):
        return config
    path = os.path.join(configs_dir, config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {config!r} is neither a file nor under {configs_dir}")
    return path


def merged_config(config: str, opts: Sequence[str] = ()):
    """The config `tools/train_net.py --config-file <config> KEY VALUE ...` runs."""
    from mask2former.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(resolve(config))
    cfg.merge_from_list(list(opts))
    return cfg


def format_table(entries: Sequence[ZooEntry]) -> str:
    rows = [("config", "task", "dataset", "backbone", "schedule", "reported", "weights")]
    for e in entries:
        results = " ".join(f"{k} {v:g}" for k, v in e.results.items()) or "-"
        rows.append((e.config, e.task, e.dataset, e.backbone, e.schedule, results, e.weights or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog="browse_configs"
    )
    parser.add_argument(
        "--task", choices=("panoptic", "instance", "semantic"), help="only this task (default: all)"
    )
    parser.add_argument("--dataset", help="only this dataset folder: coco, ade20k, cityscapes, mapillary-vistas, shapes "
                        "(default: all)")  # fmt: skip
    parser.add_argument("--backbone", help="only backbones containing this text, e.g. Swin-L (default: all)")
    parser.add_argument("--show", metavar="CONFIG", help="print this config (a file, or a path under configs/) merged "
                        "with the KEY VALUE overrides that follow, as YAML (default: list the configs)")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for --show")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = get_parser().parse_args(argv)
    if args.show:
        text = merged_config(args.show, args.opts).dump()
    else:
        if args.opts:
            raise SystemExit(f"overrides {args.opts} need --show CONFIG")
        entries = [describe(c) for c in all_configs()]
        entries = [
            e
            for e in entries
            if (args.task is None or e.task == args.task)
            and (args.dataset is None or e.dataset == args.dataset)
            and (args.backbone is None or args.backbone.lower() in e.backbone.lower())
        ]
        text = format_table(entries) + f"\n{len(entries)} config(s)"
    sys.stdout.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
