"""Checkpoints: model weight files (`weights`) and the full training state (`checkpointer`).

`weights` reads and writes weight files with the original project's parameter names (a safe
unpickler for Detectron2 `.pkl` files, `weights_only=True` for torch files); `checkpointer`
saves and restores what resuming a training run needs; `metadata` stores the training
dataset's class names and ids in both, so a trained model describes itself. Both write through `atomic_write`.
"""

from .atomic import atomic_write
from .checkpointer import (
    LAST_CHECKPOINT_FILE,
    Checkpointer,
    find_nonfinite,
    get_rng_states,
    set_rng_states,
    unwrap_model,
)
from .metadata import METADATA_KEY, dataset_metadata, metadata_num_classes, read_checkpoint_metadata
from .weights import (
    CheckpointError,
    LoadReport,
    group_keys,
    load_state_dict_file,
    load_weights,
    save_weights,
    write_state_dict,
)

__all__ = [
    "METADATA_KEY",
    "LAST_CHECKPOINT_FILE",
    "CheckpointError",
    "Checkpointer",
    "LoadReport",
    "atomic_write",
    "dataset_metadata",
    "find_nonfinite",
    "get_rng_states",
    "group_keys",
    "load_state_dict_file",
    "load_weights",
    "metadata_num_classes",
    "read_checkpoint_metadata",
    "save_weights",
    "set_rng_states",
    "unwrap_model",
    "write_state_dict",
]
