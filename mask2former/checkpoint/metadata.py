"""The training dataset's metadata inside weight files, so that a trained model describes itself.

Checkpoints (`model_<iter>.pth`, `model_final.pth`) and the weight files `write_state_dict` writes
hold, next to the weights under "model", a top-level "metadata" entry of plain data (strings,
ints, lists, dicts; loadable with `weights_only=True` and by the safe `.pkl` unpickler):

    {"dataset_name": "my_train", "num_classes": 3,
     "thing_classes": [...], "thing_colors": [[r, g, b], ...], "stuff_classes": [...],
     "stuff_colors": [...], "thing_dataset_id_to_contiguous_id": {1: 0, ...},
     "stuff_dataset_id_to_contiguous_id": {...}, "label_divisor": 1000, "ignore_label": 255}

(fields the dataset does not define are left out). Published checkpoints have no such entry;
their class names come from the config's dataset, as before.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import CheckpointError
from .integrity import verify_sha256
from .safe_load import read_torch_file, read_weights_pickle

METADATA_KEY = "metadata"
METADATA_FIELDS = (
    "thing_classes",
    "thing_colors",
    "stuff_classes",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
    "label_divisor",
    "ignore_label",
)
CLASS_HEAD_WEIGHT = "sem_seg_head.predictor.class_embed.weight"  # [K + 1, C]

__all__ = [
    "METADATA_FIELDS",
    "METADATA_KEY",
    "dataset_metadata",
    "metadata_num_classes",
    "read_checkpoint_metadata",
]


def _plain(value: Any, where: str) -> Any:
    """`value` as plain Python data (numpy scalars -> int/float, tuples -> lists)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, where) for k, v in value.items()}
    raise TypeError(f"metadata field {where} holds a {type(value).__name__}, which a checkpoint cannot store")


def dataset_metadata(cfg) -> dict[str, Any] | None:
    """The metadata of DATASETS.TRAIN[0] as plain data for a checkpoint (None without a
    training set). `num_classes` is MODEL.SEM_SEG_HEAD.NUM_CLASSES."""
    from ..data.catalog import MetadataCatalog

    if not cfg.DATASETS.TRAIN:
        return None
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    out: dict[str, Any] = {"dataset_name": name, "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)}
    for key in METADATA_FIELDS:
        value = meta.get(key)
        if value is not None:
            out[key] = _plain(value, key)
    return out


def metadata_num_classes(meta) -> int | None:
    """Number of classes the metadata names: all classes are in `stuff_classes` for panoptic
    and semantic datasets, in `thing_classes` for instance-only ones (None if it names none)."""
    for key in ("stuff_classes", "thing_classes"):
        names = meta.get(key)
        if names:
            return len(names)
    return None


def _check(meta: object, path: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its '{METADATA_KEY}' entry is a {type(meta).__name__}, not a dict")
    for key in ("thing_classes", "stuff_classes"):
        names = meta.get(key)
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: metadata field {key!r} must be a list of strings")
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        ids = meta.get(key)
        if ids is not None and not (
            isinstance(ids, dict) and all(isinstance(k, int) and isinstance(v, int) for k, v in ids.items())
        ):
            raise CheckpointError(f"{path}: metadata field {key!r} must map int ids to int ids")
    return meta


def read_checkpoint_metadata(path: str) -> dict[str, Any] | None:
    """The "metadata" entry of a weights file (local path or URL), checked; None when the file
    has none (published checkpoints). Raises CheckpointError when the number of classes it names
    differs from the rows of the file's class head."""
    if "://" in path:
        from ..utils.weights_download import resolve_weights

        path = resolve_weights(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    verify_sha256(path)
    obj = read_weights_pickle(path, None) if path.endswith(".pkl") else read_torch_file(path)
    if not isinstance(obj, dict) or obj.get(METADATA_KEY) is None:
        return None
    meta = _check(obj[METADATA_KEY], path)
    weights = obj.get("model")
    head = weights.get(CLASS_HEAD_WEIGHT) if isinstance(weights, dict) else None
    named = metadata_num_classes(meta)
    if head is not None and named is not None and head.shape[0] - 1 != named:
        raise CheckpointError(
            f"{path}: its metadata names {named} classes (dataset {meta.get('dataset_name')!r}) but its "
            f"class head {CLASS_HEAD_WEIGHT} predicts {head.shape[0] - 1}"
        )
    return meta
