"""Checkpoints: model weight files (`weights`) and the full training state (`checkpointer`).

`weights` reads and writes weight files with the original project's parameter names (a safe
unpickler for Detectron2 `.pkl` files, `weights_only=True` for torch files); `checkpointer`
saves and restores what resuming a training run needs. Both write through `atomic_write`.
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
from .weights import (
    CheckpointError,
    LoadReport,
    load_state_dict_file,
    load_weights,
    save_weights,
    write_state_dict,
)

__all__ = [
    "LAST_CHECKPOINT_FILE",
    "CheckpointError",
    "Checkpointer",
    "LoadReport",
    "atomic_write",
    "find_nonfinite",
    "get_rng_states",
    "load_state_dict_file",
    "load_weights",
    "save_weights",
    "set_rng_states",
    "unwrap_model",
    "write_state_dict",
]
