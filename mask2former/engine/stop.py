"""Stopping a training on SIGINT / SIGTERM with a final checkpoint.

`StopOnSignals` turns the two signals into a request that the training loop polls once per
iteration (the trainer shares it with the other workers through the loss all-reduce it
already does, so every rank stops after the same iteration); the trainer then writes a
checkpoint (atomically, as every checkpoint) and raises `TrainingStopped`. Nothing is
interrupted half-way: a signal during a checkpoint save lets the save finish.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

__all__ = ["STOP_SIGNALS", "StopOnSignals", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after writing a checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class HandledStopSignals:
    """Context manager: while active (main thread only), SIGINT and SIGTERM call `_handle`
    instead of interrupting; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> HandledStopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class StopOnSignals(HandledStopSignals):
    """While active, SIGINT and SIGTERM set `signum` (the trainer stops after the iteration and
    writes a checkpoint)."""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            logger.warning(
                "%s received: stopping after this iteration and writing a checkpoint "
                "(SIGKILL stops at once, losing the iterations since the last checkpoint)",
                signal.Signals(signum).name,
            )
        self.signum = signum
