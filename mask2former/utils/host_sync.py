"""Counting the host synchronisations a piece of code would make on a GPU.

On CUDA, `torch.cuda.set_sync_debug_mode("warn")` makes every synchronising call (a copy to the host,
`.item()`, `nonzero`, ...) emit a warning; `HostSyncCounter` counts them. On the CPU nothing
synchronises, so there it counts what would: the data-dependent operators (`nonzero`, boolean-mask
indexing, `bincount`, `unique`, `.item()`, ...) seen by a dispatch mode, and the Tensor methods that
read values on the host (`.cpu()`, `.tolist()`, `.item()`, `bool(t)`, ...). Tensors the caller
declares host-side (`counter.host(t)`), results of a counted `.cpu()` and everything computed only
from such tensors are host data: reading them is free and not counted.

    with HostSyncCounter(device) as counter:
        counter.host(is_thing)
        panoptic_inference(...)
    counter.count, counter.events   # number of synchronisations, and what made each
"""

from __future__ import annotations

import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter"]

# Operators whose result size or value must be known on the host (they synchronise on a GPU).
_DATA_DEPENDENT = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::bincount",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::is_nonzero",
}
# Tensor methods that read values on the host.
_HOST_READS = ("cpu", "tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__")
_SYNC_WARNING = "synchroniz"  # in CUDA's sync-debug warnings: "called a synchronizing CUDA operation"


class _CpuSyncMode(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        all_host = bool(inputs) and all(self.counter.is_host(t) for t in inputs)
        if all_host:
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.counter.host(t)
        elif self.counter._reading == 0:
            name = func._schema.name
            bool_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
            )
            # repeat_interleave with tensor repeats and no output_size must read the repeats
            data_repeats = name == "aten::repeat_interleave" and func._overloadname in (
                "Tensor",
                "self_Tensor",
            )
            data_repeats &= kwargs.get("output_size") is None
            if name in _DATA_DEPENDENT or bool_index or data_repeats:
                self.counter.events.append(str(func))
        return out


class HostSyncCounter:
    """Context manager counting host synchronisations (see the module docstring) on `device`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.events: list[str] = []
        # id -> tensor (kept alive inside the block, so ids stay unique); not a set: Tensor.__eq__ is elementwise
        self._host: dict[int, torch.Tensor] = {}
        self._reading = 0  # > 0 inside a patched host read: its own operators are not counted again

    @property
    def count(self) -> int:
        return len(self.events)

    def host(self, *tensors: torch.Tensor) -> None:
        """Declare tensors that live on the host (reading them does not synchronise)."""
        self._host.update((id(t), t) for t in tensors)

    def is_host(self, tensor: torch.Tensor) -> bool:
        return id(tensor) in self._host

    def __enter__(self) -> HostSyncCounter:
        if self.device.type == "cuda":
            self._previous_mode = torch.cuda.get_sync_debug_mode()
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.synchronize(self.device)
            torch.cuda.set_sync_debug_mode("warn")
        elif self.device.type == "cpu":
            self._originals = {name: torch.Tensor.__dict__.get(name) for name in _HOST_READS}
            for name in self._originals:
                setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
            self._mode = _CpuSyncMode(self)
            self._mode.__enter__()
        else:
            raise ValueError(f"HostSyncCounter: device must be cpu or cuda, got {self.device}")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(self._previous_mode)
            self._warnings.__exit__(*exc)
            self.events.extend(str(w.message) for w in self._caught if _SYNC_WARNING in str(w.message))
        else:
            self._mode.__exit__(*exc)
            for name, original in self._originals.items():
                if original is None:  # inherited from the C base class
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)

    def _counting(self, name: str, original):
        counter = self

        def read(tensor: torch.Tensor, *args, **kwargs):
            if counter.is_host(tensor):
                return original(tensor, *args, **kwargs)
            counter.events.append(f"Tensor.{name}")
            counter._reading += 1
            try:
                result = original(tensor, *args, **kwargs)
            finally:
                counter._reading -= 1
            if isinstance(result, torch.Tensor):
                counter.host(result)
            return result

        return read
