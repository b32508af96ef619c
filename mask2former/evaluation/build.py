"""Choose evaluators from the dataset's `evaluator_type` and MODEL.MASK_FORMER.TEST.*_ON."""

from __future__ import annotations

import os

from ..data.catalog import MetadataCatalog
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators
from .panoptic_evaluation import COCOPanopticEvaluator
from .sem_seg_evaluation import SemSegEvaluator

_PANOPTIC_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    """The original project's choice of evaluators for `dataset_name`."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    etype = meta.get("evaluator_type")
    if etype is None:
        raise KeyError(f"Metadata of dataset {dataset_name!r} has no evaluator_type")
    test = cfg.MODEL.MASK_FORMER.TEST
    evs: list[DatasetEvaluator] = []
    if etype in ("sem_seg", "ade20k_panoptic_seg") and test.SEMANTIC_ON:
        evs.append(SemSegEvaluator(dataset_name, output_dir=output_folder))
    if etype in _PANOPTIC_TYPES and test.PANOPTIC_ON:
        evs.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if etype == "coco" or (etype in ("coco_panoptic_seg", "ade20k_panoptic_seg") and test.INSTANCE_ON):
        evs.append(COCOEvaluator(dataset_name, output_dir=output_folder))
    if etype == "coco_panoptic_seg" and test.SEMANTIC_ON and "sem_seg_root" in meta:
        evs.append(SemSegEvaluator(dataset_name, output_dir=output_folder))
    if etype == "cityscapes_instance" or (etype == "cityscapes_panoptic_seg" and test.INSTANCE_ON):
        evs.append(CityscapesInstanceEvaluator(dataset_name))
    if etype == "cityscapes_sem_seg" or (etype == "cityscapes_panoptic_seg" and test.SEMANTIC_ON):
        evs.append(CityscapesSemSegEvaluator(dataset_name))
    if etype == "mapillary_vistas_panoptic_seg" and test.SEMANTIC_ON:
        evs.append(SemSegEvaluator(dataset_name, output_dir=output_folder))
    if not evs:
        raise ValueError(
            f"No evaluator for dataset {dataset_name!r} (evaluator_type {etype!r}) with "
            f"PANOPTIC_ON={test.PANOPTIC_ON}, INSTANCE_ON={test.INSTANCE_ON}, SEMANTIC_ON={test.SEMANTIC_ON}"
        )
    return evs[0] if len(evs) == 1 else DatasetEvaluators(evs)


__all__ = ["build_evaluator"]
