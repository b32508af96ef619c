"""Training checkpoints: atomic, safe to load, and complete enough to resume exactly.

A checkpoint (`model_<iter>.pth`, `model_final.pth`) holds:
    "model": the model's state dict (original parameter names; DDP's `module.` removed),
    "optimizer", "scheduler", "scaler": their state dicts,
    "iteration": the last finished iteration,
    "metadata": the training dataset's metadata as plain data (class names, colours, id maps;
        see `checkpoint.metadata`), so the file describes its own classes,
    "per_rank": one entry per worker with its RNG states (python, numpy, torch CPU, CUDA) and
        its data loader's state (when the loader has `state_dict()`),
all as tensors and plain Python types, so `torch.load(weights_only=True)` reads it and loading
never runs code from the file.

Writing is atomic: the file is written to a temporary name in the same folder, flushed and
fsync'ed, then `os.replace`d into place; its SHA-256 is recorded beside it
(`<name>.pth.sha256`); only then is the `last_checkpoint` pointer file replaced (atomically too)
to name it. A crash at any moment leaves the previous checkpoint and a pointer that names a
complete file. A model with NaN/inf weights is never written.

Reading checks the recorded SHA-256 (one flipped bit is found) and reads within the limits of
`safe_load`. `load_newest_intact` resumes from the newest checkpoint that passes, saying which
newer ones it skipped and why (corrupt, truncated, unreadable).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mask2former.utils import dist as dist_utils

from .atomic import atomic_write
from .errors import CheckpointError
from .integrity import record_sha256, verify_sha256
from .safe_load import read_torch_file

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
_CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth$")


# --------------------------------------------------------------------------------------------
# RNG states as tensors and plain types (loadable with weights_only=True)
# --------------------------------------------------------------------------------------------
def get_rng_states() -> dict[str, Any]:
    """This process's RNG states: python `random`, numpy's global RNG, torch CPU and CUDA."""
    version, py_state, gauss = random.getstate()
    # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    np_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {  # the fields of numpy's legacy tuple, which `set_rng_states` gives back
            "name": np_state["bit_generator"],
            "keys": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states written by `get_rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        if not torch.cuda.is_available():
            logger.warning(
                "The checkpoint holds CUDA RNG states but CUDA is not available: they are not restored"
            )
        elif len(states["cuda"]) != torch.cuda.device_count():
            logger.warning(
                "The checkpoint holds CUDA RNG states for %d devices, this process sees %d: they are not restored",
                len(states["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(states["cuda"])


def find_nonfinite(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point entries holding NaN or inf."""
    names = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in names]).cpu()
    return [k for k, ok in zip(names, finite.tolist()) if not ok]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Checkpointer:
    """Saves and restores the whole training state (see the module docstring).

    `save` is a collective: every rank calls it (the RNG and data-loader states of all ranks
    are gathered); rank 0 writes the file. `load` is called on every rank. `metadata` returns
    the training dataset's metadata (plain data) to store in each file; it is called at save
    time, when the dataset has been loaded.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scaler: torch.amp.GradScaler | None = None,
        data_loader: object | None = None,
        metadata: Callable[[], dict[str, Any] | None] | None = None,
    ):
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.data_loader = data_loader
        self.metadata = metadata

    # ---- writing -----------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": get_rng_states()}
        if hasattr(self.data_loader, "state_dict"):
            state["data_loader"] = self.data_loader.state_dict()
        return state

    def save(self, name: str, *, iteration: int) -> str:
        """Write `<save_dir>/<name>.pth` for the state after `iteration` and point
        `last_checkpoint` at it. Raises FloatingPointError (and writes nothing) when a model
        weight is NaN/inf. Returns the file's path."""
        per_rank = dist_utils.all_gather(self._rank_state())
        path = os.path.join(self.save_dir, f"{name}.pth")
        model_state = self.model.state_dict()
        bad = find_nonfinite(model_state)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise FloatingPointError(
                f"not writing checkpoint {path} (iteration {iteration}): non-finite values in {shown}"
            )
        if not dist_utils.is_main_process():
            return path
        checkpoint: dict[str, Any] = {"model": model_state, "iteration": iteration, "per_rank": per_rank}
        for key in ("optimizer", "scheduler", "scaler"):
            obj = getattr(self, key)
            if obj is not None:
                checkpoint[key] = obj.state_dict()
        metadata = self.metadata() if self.metadata is not None else None
        if metadata is not None:
            checkpoint["metadata"] = metadata
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        record_sha256(path)
        self.tag_last_checkpoint(os.path.basename(path))
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def tag_last_checkpoint(self, basename: str) -> None:
        """Atomically point `last_checkpoint` at `basename` (a complete file in save_dir)."""
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        atomic_write(pointer, lambda f: f.write(basename.encode()))

    # ---- reading -----------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return os.path.isfile(os.path.join(self.save_dir, LAST_CHECKPOINT_FILE))

    def get_checkpoint_file(self) -> str:
        """Path of the checkpoint `last_checkpoint` names."""
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{pointer} names {name!r}, which does not exist in {self.save_dir}")
        return path

    def read(self, path: str) -> dict[str, Any]:
        """Read a checkpoint written by `save`, checking its recorded SHA-256. Raises
        CheckpointError for a corrupt, truncated or unreadable file, KeyError for a file that
        is not a training checkpoint."""
        if not verify_sha256(path):
            logger.warning("%s has no recorded SHA-256: it cannot be checked for corruption", path)
        checkpoint = read_torch_file(path)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a training checkpoint")
        missing = [k for k in ("model", "iteration", "per_rank") if k not in checkpoint]
        if missing:
            raise KeyError(
                f"{path} is not a training checkpoint (no {', '.join(missing)}); use MODEL.WEIGHTS for weights"
            )
        return checkpoint

    def candidates(self) -> list[str]:
        """Checkpoints in save_dir, newest first: the one `last_checkpoint` names, then
        `model_final.pth` and `model_<iter>.pth` by iteration."""
        found = [name for name in os.listdir(self.save_dir) if _CHECKPOINT_NAME.match(name)]
        found.sort(key=lambda n: float("inf") if n == "model_final.pth" else int(n[6:-4]), reverse=True)
        paths = [os.path.join(self.save_dir, name) for name in found]
        try:
            pointed = self.get_checkpoint_file() if self.has_checkpoint() else None
        except FileNotFoundError as e:
            logger.warning("%s; looking at the other checkpoints", e)
            pointed = None
        if pointed is not None:
            paths = [pointed] + [p for p in paths if os.path.abspath(p) != os.path.abspath(pointed)]
        return paths

    def load_newest_intact(self) -> tuple[str, int]:
        """Resume from the newest checkpoint that reads intact (see `candidates`), logging each
        newer one skipped and why. Returns (its path, its iteration); raises CheckpointError
        when none is intact."""
        skipped = []
        for path in self.candidates():
            try:
                checkpoint = self.read(path)
            except CheckpointError as e:
                logger.warning("Skipping checkpoint %s: %s", path, e)
                skipped.append(f"{os.path.basename(path)}: {e}")
                continue
            if skipped:
                logger.warning(
                    "Resuming from %s, the newest intact checkpoint (skipped %d)", path, len(skipped)
                )
            return path, self.load(path, checkpoint)
        raise CheckpointError(
            f"no intact checkpoint to resume from in {self.save_dir}:\n" + "\n".join(skipped)
        )

    def load(self, path: str, checkpoint: dict[str, Any] | None = None) -> int:
        """Restore model, optimizer, scheduler, scaler, this rank's RNG and data-loader states
        from a checkpoint written by `save` (`checkpoint`: its contents, when already read).
        Returns the checkpoint's iteration."""
        if checkpoint is None:
            checkpoint = self.read(path)
        incompatible = self.model.load_state_dict(checkpoint["model"], strict=False)
        if incompatible.missing_keys or incompatible.unexpected_keys:
            raise RuntimeError(
                f"{path} does not match the model: missing {incompatible.missing_keys[:10]}, "
                f"unexpected {incompatible.unexpected_keys[:10]}"
            )
        for key in ("optimizer", "scheduler", "scaler"):
            obj = getattr(self, key)
            if obj is None:
                continue
            if key not in checkpoint:
                raise KeyError(f"{path} has no {key} state to resume from")
            obj.load_state_dict(checkpoint[key])
        if self.optimizer is not None:
            _keep_optimizer_kernels(self.optimizer, path)
        self._load_rank_state(path, checkpoint["per_rank"])
        logger.info("Resumed from %s (iteration %d)", path, checkpoint["iteration"])
        return int(checkpoint["iteration"])

    def _load_rank_state(self, path: str, per_rank: list[dict[str, Any]]) -> None:
        world_size, rank = dist_utils.get_world_size(), dist_utils.get_rank()
        if len(per_rank) != world_size:
            logger.warning(
                "%s was written by %d workers, this run has %d: RNG states and data order are not restored, "
                "so the run continues but does not replay the original one exactly",
                path,
                len(per_rank),
                world_size,
            )
            return
        state = per_rank[rank]
        set_rng_states(state["rng"])
        if "data_loader" in state:
            if not hasattr(self.data_loader, "load_state_dict"):
                raise TypeError(
                    f"{path} holds a data-loader position but the train loader "
                    f"({type(self.data_loader).__name__}) has no load_state_dict()"
                )
            self.data_loader.load_state_dict(state["data_loader"])
        elif self.data_loader is not None:
            logger.warning("%s holds no data-loader position: the data order restarts", path)


# Which kernels an optimizer runs is this run's choice (engine/solver.py), not training state; but
# `Optimizer.load_state_dict` restores them from the checkpoint's parameter groups.
_KERNEL_CHOICES = ("fused", "foreach")


def _keep_optimizer_kernels(optimizer: torch.optim.Optimizer, path: str) -> None:
    """Put this run's kernel choices back into the parameter groups after loading `path`'s state
    (one written with other choices, or by a version without fused kernels), with one log line."""
    changed = set()
    for group in optimizer.param_groups:
        for key in _KERNEL_CHOICES:
            if key in optimizer.defaults and group.get(key) != optimizer.defaults[key]:
                changed.add(f"{key} {group.get(key)} -> {optimizer.defaults[key]}")
                group[key] = optimizer.defaults[key]
    if changed:
        logger.info(
            "%s's optimizer ran other kernels; this run keeps its own: %s", path, ", ".join(sorted(changed))
        )
