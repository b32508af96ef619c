"""The hook interface, kept apart from both the trainer and the builtin hooks so that neither
module imports the other.

A hook is called by the trainer at four points:

    before_train()  ->  for each iteration: before_step(); run_step(); after_step()  ->  after_train()

`self.trainer` is set when the hook is registered. `after_train` runs even when training
stops with an error; `self.trainer.iter == self.trainer.max_iter` tells that it finished.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mask2former.utils.events import EventStorage


class TrainerState(Protocol):
    """What the builtin hooks read from the trainer (`mask2former.engine.Trainer` provides it)."""

    iter: int
    max_iter: int
    storage: EventStorage
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


class HookBase:
    trainer: TrainerState

    def before_train(self) -> None:
        return None

    def after_train(self) -> None:
        return None

    def before_step(self) -> None:
        return None

    def after_step(self) -> None:
        return None
