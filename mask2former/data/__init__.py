"""Datasets (catalog, builtin registrations, custom registration), dataset mappers with the
original's augmentations, and data loaders. Importing this package registers the builtin
datasets; it reads no files. The loaders, mappers and augmentations (torchvision, OpenCV) are
imported on first use, so that code needing only the catalog or `read_image` starts fast."""

import importlib

from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .datasets.builtin import register_all
from .datasets.coco import load_coco_json, load_sem_seg, register_coco_instances, register_sem_seg
from .datasets.coco_panoptic import load_coco_panoptic_json, register_coco_panoptic
from .detection_utils import DatasetFormatError, read_image

register_all()

# name -> submodule defining it, imported when the name is first read
_LAZY = {
    "transforms": ".transforms",
    "build_detection_test_loader": ".build",
    "build_detection_train_loader": ".build",
    "get_detection_dataset_dicts": ".build",
    "trivial_batch_collator": ".build",
    "DATASET_MAPPER_REGISTRY": ".dataset_mappers",
    "COCOInstanceLSJDatasetMapper": ".dataset_mappers",
    "COCOPanopticLSJDatasetMapper": ".dataset_mappers",
    "InferenceDatasetMapper": ".dataset_mappers",
    "MaskFormerInstanceDatasetMapper": ".dataset_mappers",
    "MaskFormerPanopticDatasetMapper": ".dataset_mappers",
    "MaskFormerSemanticDatasetMapper": ".dataset_mappers",
    "build_dataset_mapper": ".dataset_mappers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "transforms" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "DATASET_MAPPER_REGISTRY",
    "DatasetCatalog",
    "DatasetFormatError",
    "InferenceDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "Metadata",
    "MetadataCatalog",
    "build_dataset_mapper",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "load_coco_json",
    "load_coco_panoptic_json",
    "load_sem_seg",
    "read_image",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_sem_seg",
    "transforms",
    "trivial_batch_collator",
]
