"""Training engine: trainer, hooks, launch, solver (checkpointing lives in mask2former.checkpoint)."""

from mask2former.checkpoint import Checkpointer

from .defaults import default_argument_parser, default_setup
from .hook_base import HookBase
from .launch import launch
from .trainer import ResumableTrainLoader, Trainer

__all__ = [
    "Checkpointer",
    "HookBase",
    "ResumableTrainLoader",
    "Trainer",
    "default_argument_parser",
    "default_setup",
    "launch",
]
