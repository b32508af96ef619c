"""The prediction files the evaluators write beside their metrics (COCO results JSON, semantic
RLE JSON, panoptic predictions JSON)."""

from __future__ import annotations

import json
import os


def write_predictions_json(output_dir: str | None, file_name: str, data) -> None:
    """Write `data` as JSON to <output_dir>/<file_name> (the folder is created); nothing when
    `output_dir` is empty."""
    if not output_dir:
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, file_name), "w") as f:
        json.dump(data, f)


__all__ = ["write_predictions_json"]
