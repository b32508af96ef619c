"""The builtin training hooks (the interface, `HookBase`, is in `hook_base`)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping

from mask2former.checkpoint import Checkpointer, get_rng_states, set_rng_states
from mask2former.checkpoint.integrity import remove_with_sha256
from mask2former.utils import dist as dist_utils
from mask2former.utils.events import EventWriter

from .hook_base import HookBase

logger = logging.getLogger(__name__)

__all__ = ["EvalHook", "HookBase", "IterationTimer", "LRScheduler", "PeriodicCheckpointer", "PeriodicWriter"]


class IterationTimer(HookBase):
    """Records the wall time of each iteration as the scalar "time" (run_step plus the hooks
    before this one), and logs the total training time at the end."""

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._start_iter = self.trainer.iter

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._step_start)

    def after_train(self) -> None:
        done = self.trainer.iter - self._start_iter
        total = time.perf_counter() - self._train_start
        if done > 0:
            logger.info(
                "Overall training time: %.1f s for %d iterations (%.4f s/it)", total, done, total / done
            )


class LRScheduler(HookBase):
    """Records the learning rate used by this iteration ("lr", of the parameter group with
    the most parameters) and steps the scheduler once per iteration."""

    def before_train(self) -> None:
        groups = self.trainer.optimizer.param_groups
        self._group = max(range(len(groups)), key=lambda i: len(groups[i]["params"]))

    def after_step(self) -> None:
        lr = self.trainer.optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.trainer.scheduler.step()


_PERIODIC_NAME = re.compile(r"^model_\d{7}\.pth$")


class PeriodicCheckpointer(HookBase):
    """Saves `model_<iter>.pth` every `period` iterations and `model_final.pth` after the last
    one; keeps the newest `max_to_keep` periodic checkpoints (None: keep all). Every rank
    calls it (saving gathers the ranks' RNG and data states)."""

    def __init__(self, checkpointer: Checkpointer, period: int, max_iter: int, max_to_keep: int | None = 3):
        if period <= 0:
            raise ValueError(f"SOLVER.CHECKPOINT_PERIOD must be positive, got {period}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1 or None, got {max_to_keep}")
        self.checkpointer = checkpointer
        self.period = period
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep

    def after_step(self) -> None:
        it = self.trainer.iter
        if it + 1 == self.max_iter:
            self.checkpointer.save("model_final", iteration=it)
        elif (it + 1) % self.period == 0:
            self.checkpointer.save(f"model_{it:07d}", iteration=it)
            self._remove_old()

    def _remove_old(self) -> None:
        if self.max_to_keep is None or not dist_utils.is_main_process():
            return
        folder = self.checkpointer.save_dir
        periodic = sorted(f for f in os.listdir(folder) if _PERIODIC_NAME.match(f))
        for name in periodic[: -self.max_to_keep]:
            remove_with_sha256(os.path.join(folder, name))


def _flatten_results(results: Mapping, prefix: str = "") -> dict[str, float]:
    flat = {}
    for k, v in results.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(_flatten_results(v, key))
        else:
            flat[key] = float(v)
    return flat


class EvalHook(HookBase):
    """Runs `eval_function()` every `eval_period` iterations (0: never periodically) and once
    after the last iteration; its nested dict of metrics is recorded as scalars "a/b/c".
    The RNG states are saved before and restored after, so evaluating never changes the
    training that follows it."""

    def __init__(self, eval_period: int, eval_function: Callable[[], Mapping]):
        self._period = eval_period
        self._func = eval_function

    def _do_eval(self) -> None:
        rng = get_rng_states()
        results = self._func()
        set_rng_states(rng)
        if results:
            flat = _flatten_results(results)
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        dist_utils.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Calls every writer each `period` iterations, after the last iteration, and at the end."""

    def __init__(self, writers: list[EventWriter], period: int = 20):
        self._writers = writers
        self._period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it + 1 == self.trainer.max_iter:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            writer.write()
            writer.close()
