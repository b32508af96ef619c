"""Evaluator interface and the inference loop (cross-process gathering: mask2former.utils.dist)."""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager

import torch

from mask2former.utils import dist as dist_utils

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates (inputs, outputs) pairs with `process` and reports metrics with `evaluate`.
    `evaluate` returns {task: {metric: value}} on the main process (and may return {} elsewhere)."""

    def reset(self) -> None:
        """Prepare for a new round of evaluation."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Consume one batch: `inputs` as given to the model, `outputs` as returned by it."""

    def evaluate(self) -> dict:
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run side by side; their results are merged (task names must differ)."""

    def __init__(self, evaluators: list[DatasetEvaluator]):
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict:
        results: OrderedDict = OrderedDict()
        for e in self._evaluators:
            for k, v in (e.evaluate() or {}).items():
                if k in results:
                    raise KeyError(f"Two evaluators report the same task {k!r}")
                results[k] = v
        return results


@contextmanager
def _eval_mode(model: torch.nn.Module):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def inference_on_dataset(model, data_loader, evaluator: DatasetEvaluator | None) -> dict:
    """Run `model` on every batch of `data_loader` in eval mode under torch.no_grad, feed the
    evaluator, log progress and seconds per image, and return `evaluator.evaluate()`."""
    evaluator = evaluator or DatasetEvaluators([])
    evaluator.reset()
    total = len(data_loader)
    num_warmup = min(5, total - 1)
    start = time.perf_counter()
    compute_time = 0.0
    n_images = 0
    with _eval_mode(model), torch.no_grad():
        for idx, inputs in enumerate(data_loader):
            if idx == num_warmup:
                start, compute_time, n_images = time.perf_counter(), 0.0, 0
            t0 = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - t0
            evaluator.process(inputs, outputs)
            n_images += len(inputs)
            if (idx + 1) % 20 == 0 or idx + 1 == total:
                elapsed = time.perf_counter() - start
                logger.info(
                    "Inference done %d/%d. %.4f s/img model, %.4f s/img total",
                    idx + 1,
                    total,
                    compute_time / max(n_images, 1),
                    elapsed / max(n_images, 1),
                )
    elapsed = time.perf_counter() - start
    logger.info(
        "Total inference time: %s (%.6f s / img per device, on %d devices)",
        datetime.timedelta(seconds=int(elapsed)),
        elapsed / max(n_images, 1),
        dist_utils.get_world_size(),
    )
    results = evaluator.evaluate()
    return {} if results is None else results


def print_csv_format(results: dict) -> None:
    """Log each task's metrics as two comma-separated lines, easy to paste into a spreadsheet."""
    for task, res in results.items():
        if not isinstance(res, dict):
            logger.info("copypaste: %s=%s", task, res)
            continue
        keys = [k for k in res if "-" not in k]  # skip per-category entries
        logger.info("copypaste: Task: %s", task)
        logger.info("copypaste: %s", ",".join(keys))
        logger.info("copypaste: %s", ",".join(f"{res[k]:.4f}" for k in keys))


__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_on_dataset",
    "print_csv_format",
]
