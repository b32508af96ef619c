"""Evaluators: COCO instance AP (pycocotools), panoptic PQ (this project's implementation of the
panopticapi definition, checked equal to panopticapi), semantic mIoU, Cityscapes (cityscapesscripts); the inference loop."""

from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_on_dataset, print_csv_format
from .panoptic_evaluation import COCOPanopticEvaluator, pq_single_image
from .sem_seg_evaluation import SemSegEvaluator

__all__ = [
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "SemSegEvaluator",
    "build_evaluator",
    "inference_on_dataset",
    "pq_single_image",
    "print_csv_format",
]
