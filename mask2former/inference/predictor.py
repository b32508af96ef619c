"""`Predictor`: a model built from a config, for inference on images in memory or on disk.

    cfg = get_cfg()
    cfg.merge_from_file("configs/shapes/maskformer2_R18_shapes.yaml")
    cfg.merge_from_list(["MODEL.WEIGHTS", "output/shapes/model_final.pth"])
    predictor = Predictor(cfg)
    result = predictor(cv2.imread("input.jpg"))                    # one BGR image -> one dict
    results = predictor([img_a, img_b, "c.png"], format="RGB")     # a list -> a list of dicts

Each result dict holds what the config switches on (MODEL.MASK_FORMER.TEST.*_ON), at the
original image's resolution: "sem_seg" float [K, H, W], "panoptic_seg" (int32 [H, W] ids,
segments_info), "instances" (Instances with pred_masks bool [N, H, W], pred_boxes, scores,
pred_classes); panoptic segments_info entries carry their "score". Keep what is sure enough with

    inst = result["instances"]; inst = inst[inst.scores >= 0.7]
    pan, segments = result["panoptic_seg"]; segments = [s for s in segments if s["score"] >= 0.7]

Class names (`predictor.metadata`) come from the weights file when it carries the training
dataset's metadata (every checkpoint this project writes does), else from the config's dataset.

Images are resized as in evaluation (shortest edge INPUT.MIN_SIZE_TEST, longest
at most INPUT.MAX_SIZE_TEST); a list is run in batches of `batch_size` images per forward pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import LoadReport, load_weights, metadata_num_classes, read_checkpoint_metadata
from ..data.catalog import Metadata, MetadataCatalog
from ..data.detection_utils import read_image, shortest_edge_size
from ..modeling import build_model

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike

__all__ = ["ImageInput", "Predictor", "use_checkpoint_metadata"]


def use_checkpoint_metadata(cfg, weights: str) -> Metadata | None:
    """When the weights file carries its training set's metadata: register it as
    "<dataset> (<file name>)", make that the (unfrozen) `cfg`'s DATASETS.TRAIN and TEST, so the
    model is built with the file's thing classes, and return it. None when the file has none
    (published checkpoints: the config's dataset is used). Raises ValueError, naming both numbers,
    when MODEL.SEM_SEG_HEAD.NUM_CLASSES differs from the number of classes the file was trained on."""
    meta = read_checkpoint_metadata(weights) if weights else None
    if meta is None:
        return None
    fields = {k: v for k, v in meta.items() if k not in ("dataset_name", "num_classes")}
    named = metadata_num_classes(fields)
    configured = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if named is not None and named != configured:
        raise ValueError(
            f"{weights} was trained on {named} classes (dataset {meta.get('dataset_name')!r}: its metadata) "
            f"but MODEL.SEM_SEG_HEAD.NUM_CLASSES is {configured}; set MODEL.SEM_SEG_HEAD.NUM_CLASSES {named}"
        )
    name = f"{meta.get('dataset_name', 'unnamed')} ({os.path.basename(weights)})"
    MetadataCatalog.pop(name, None)
    metadata = MetadataCatalog.get(name).set(**fields)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    logger.info("class names from the metadata in %s (dataset %r, %s classes)", weights,
                meta.get("dataset_name"), named)  # fmt: skip
    return metadata


class Predictor:
    """Build the model of `cfg`, load `cfg.MODEL.WEIGHTS` when set, and run inference.

    Attributes:
        cfg: a frozen copy of the config.
        model: the model, in eval mode, on MODEL.DEVICE.
        metadata: class names and colours: the weights file's own metadata when it has some,
            else the Metadata of DATASETS.TEST[0] (else DATASETS.TRAIN[0]).
        batch_size: images per forward pass when called on a list.
    """

    def __init__(self, cfg, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"Predictor batch_size must be at least 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.cfg.defrost()
        from_weights = use_checkpoint_metadata(self.cfg, self.cfg.MODEL.WEIGHTS)
        self.cfg.freeze()
        self.batch_size = batch_size
        self.metadata = from_weights or self._metadata_from_config()
        self.model = build_model(self.cfg)
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            report = load_weights(self.model, self.cfg.MODEL.WEIGHTS)
            self._check_class_head(report)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the predictor runs a model with random weights")
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        self.min_size = int(self.cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(self.cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, images: ImageInput | Sequence[ImageInput], format: str = "BGR") -> dict | list[dict]:
        """Predict one image (returns one dict) or a list of images (returns a list of dicts).

        Args:
            images: an array uint8 [H, W, 3] in `format` channel order, a file path, or a list
                of those.
            format: "BGR" (as cv2.imread returns) or "RGB"; applies to arrays. Files are decoded
                in the right order whatever `format` says.
        """
        if format not in ("BGR", "RGB"):
            raise ValueError(f"Predictor format must be 'BGR' or 'RGB', got {format!r}")
        if isinstance(images, (np.ndarray, str, os.PathLike)):
            return self._predict([images], format)[0]
        return self._predict(list(images), format)

    def _predict(self, items: list[ImageInput], format: str) -> list[dict]:
        """The model's outputs for `items`, run in batches of `batch_size`."""
        inputs = [self._prepare(item, format, i) for i, item in enumerate(items)]
        outputs: list[dict] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                outputs.extend(self.model(inputs[start : start + self.batch_size]))
        return outputs

    def _prepare(self, item: ImageInput, format: str, index: int) -> dict:
        """One input -> the model's input dict: "image" uint8 [3, h, w] in INPUT.FORMAT order,
        resized for testing, and the original "height" / "width"."""
        if isinstance(item, (str, os.PathLike)):
            rgb = read_image(os.fspath(item), "RGB")
        elif isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                raise ValueError(
                    f"Predictor input {index}: expected a uint8 array [H, W, 3], got {item.dtype} {item.shape}"
                )
            rgb = item[:, :, ::-1] if format == "BGR" else item
        else:
            raise TypeError(
                f"Predictor input {index}: expected an array or a file path, got {type(item).__name__}"
            )
        h, w = rgb.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # [3, H, W] RGB
        if self.min_size > 0:
            newh, neww = shortest_edge_size(h, w, self.min_size, self.max_size)
            if (newh, neww) != (h, w):
                # what torchvision's resize does for uint8 images (bit for bit), without importing it
                image = F.interpolate(
                    image[None], size=(newh, neww), mode="bilinear", align_corners=False, antialias=True
                )[0]
        if self.input_format == "BGR":
            image = image.flip(0)
        return {"image": image.contiguous(), "height": h, "width": w}

    def _metadata_from_config(self) -> Metadata:
        names = list(self.cfg.DATASETS.TEST) or list(self.cfg.DATASETS.TRAIN)
        metadata = MetadataCatalog.get(names[0] if names else "__unnamed_predictor_dataset")
        named = metadata_num_classes(metadata)
        configured = int(self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        if named is not None and named != configured:
            raise ValueError(
                f"dataset {metadata.name!r} names {named} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is "
                f"{configured}: its class names would be drawn on the wrong classes"
            )
        return metadata

    def _check_class_head(self, report: LoadReport) -> None:
        """Inference with a class head left at random values is refused."""
        for key, file_shape, model_shape in report.mismatched:
            if key.endswith("class_embed.weight"):
                raise ValueError(
                    f"{self.cfg.MODEL.WEIGHTS} predicts {file_shape[0] - 1} classes but "
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {model_shape[0] - 1}; set it to {file_shape[0] - 1}"
                )
