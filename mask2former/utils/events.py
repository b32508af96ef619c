"""Training events: an `EventStorage` of scalar histories filled during training, and the
writers that turn it into console lines, `metrics.json` and TensorBoard events.

Inside `with EventStorage(start_iter) as storage:` any code can reach the storage with
`get_event_storage()` and record a scalar with `put_scalar(name, value)`; the trainer sets
`storage.iter` before each step.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import defaultdict

import torch
from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE_STACK: list[EventStorage] = []


def get_event_storage() -> EventStorage:
    """The innermost active `EventStorage`; raises when called outside one."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside a `with EventStorage(...)` block")
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Scalar histories indexed by iteration.

    Each scalar keeps its full history (a `HistoryBuffer` of (value, iteration) pairs) and a
    smoothing hint: writers report the median over their window for hinted scalars and the
    latest value otherwise.
    """

    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest: dict[str, tuple[float, int]] = {}
        self._version: dict[str, int] = {}
        self._counter = 0

    def put_scalar(self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True) -> None:
        value = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._counter += 1
        self._version[name] = self._counter
        previous = self._smoothing_hints.setdefault(name, smoothing_hint)
        if previous != smoothing_hint:
            raise ValueError(
                f"scalar {name!r} was recorded with smoothing_hint={previous}, now {smoothing_hint}"
            )

    def put_scalars(self, *, smoothing_hint: bool = True, **kwargs: float) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no scalar named {name!r} in the EventStorage")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """name -> (latest value, iteration it was recorded at)."""
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like `latest`, with hinted scalars replaced by their median over the last `window_size`."""
        out = {}
        for name, (value, it) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            out[name] = (value, it)
        return out

    def scalars_since(self, version: int, window_size: int = 20) -> tuple[dict[str, tuple[float, int]], int]:
        """The scalars recorded after `version` (as `latest_with_smoothing_hint`) and the
        current version; writers pass back the version they got to see only new records."""
        latest = self.latest_with_smoothing_hint(window_size)
        fresh = {k: v for k, v in latest.items() if self._version[k] > version}
        return fresh, self._counter

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage blocks were exited out of order")
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Writes the current storage somewhere; `write()` is called once per logging period."""

    def write(self) -> None:
        raise TypeError(f"{type(self).__name__} must implement write()")

    def close(self) -> None:
        return None


class JSONWriter(EventWriter):
    """Appends one JSON line per call: {"iteration": i, "<scalar>": value, ...} with the
    scalars recorded since the previous call (hinted ones smoothed over `window_size`)."""

    def __init__(self, json_file: str, window_size: int = 20):
        self._file = open(json_file, "a")  # noqa: SIM115 - kept open for the whole run, closed in close()
        self._window_size = window_size
        self._version = 0

    def write(self) -> None:
        storage = get_event_storage()
        fresh, self._version = storage.scalars_since(self._version, self._window_size)
        if not fresh:
            return
        line = {"iteration": storage.iter, **{k: v for k, (v, _) in fresh.items()}}
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    """Writes the scalars recorded since the previous call as TensorBoard events in `log_dir`."""

    def __init__(self, log_dir: str, window_size: int = 20):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window_size = window_size
        self._version = 0

    def write(self) -> None:
        fresh, self._version = get_event_storage().scalars_since(self._version, self._window_size)
        for name, (value, it) in fresh.items():
            self._writer.add_scalar(name, value, it)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Logs one console line: ETA, iteration, losses, time per iteration, data time, lr and
    (on CUDA) the maximum memory allocated."""

    def __init__(self, max_iter: int, window_size: int = 20):
        self.logger = logging.getLogger("mask2former.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None
        self._version = 0

    def _eta(self, storage: EventStorage) -> str:
        remaining = self._max_iter - storage.iter - 1
        if "time" in storage.histories():
            seconds = storage.history("time").median(1000) * remaining
            return str(datetime.timedelta(seconds=int(seconds)))
        now = time.perf_counter()
        eta = "N/A"
        if self._last_write is not None and storage.iter > self._last_write[0]:
            per_iter = (now - self._last_write[1]) / (storage.iter - self._last_write[0])
            eta = str(datetime.timedelta(seconds=int(per_iter * remaining)))
        self._last_write = (storage.iter, now)
        return eta

    def write(self) -> None:
        storage = get_event_storage()
        fresh, self._version = storage.scalars_since(self._version)
        if not fresh:
            return
        histories = storage.histories()
        w = self._window_size
        losses = "  ".join(
            f"{k}: {h.median(w):.4g}"
            for k, h in histories.items()
            if k == "total_loss" or k.startswith("loss_")
        )
        parts = [f"eta: {self._eta(storage)}", f"iter: {storage.iter}/{self._max_iter}", losses]
        if "time" in histories:
            parts.append(f"time: {histories['time'].avg(w):.4f}")
        if "data_time" in histories:
            parts.append(f"data_time: {histories['data_time'].avg(w):.4f}")
        if "lr" in histories:
            parts.append(f"lr: {histories['lr'].latest():.5g}")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 1024**2:.0f}M")
        self.logger.info("  ".join(p for p in parts if p))
