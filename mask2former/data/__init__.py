"""Datasets (catalog, builtin registrations, custom registration), dataset mappers with the
original's augmentations, and data loaders. Importing this package registers the builtin
datasets; it reads no files."""

from . import transforms
from .build import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .dataset_mappers import (
    DATASET_MAPPER_REGISTRY,
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    InferenceDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_dataset_mapper,
)
from .datasets.builtin import register_all
from .datasets.coco import load_coco_json, load_sem_seg, register_coco_instances, register_sem_seg
from .datasets.coco_panoptic import load_coco_panoptic_json, register_coco_panoptic
from .detection_utils import DatasetFormatError, read_image

register_all()

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
