"""Training engine: trainer, hooks, launch, checkpointing, solver."""

from .checkpointer import Checkpointer
from .defaults import default_argument_parser, default_setup
from .launch import launch
from .trainer import ResumableTrainLoader, Trainer

__all__ = [
    "Checkpointer",
    "ResumableTrainLoader",
    "Trainer",
    "default_argument_parser",
    "default_setup",
    "launch",
]
