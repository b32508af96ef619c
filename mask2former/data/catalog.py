"""Two global catalogs, as Detectron2 users know them:

- `DatasetCatalog`: dataset name -> a function returning the dataset as a list of dicts. The
  function runs only when `DatasetCatalog.get(name)` is called (registering builtin datasets
  reads no files; `register_coco_instances` / `register_coco_panoptic` without class metadata
  read only the JSON's categories).
- `MetadataCatalog`: dataset name -> `Metadata` (class names, colours, id maps, paths,
  `evaluator_type`, `ignore_label`), with attribute access and `.set(**kwargs)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class _DatasetCatalog(dict):
    """A dict name -> loader function with a registration API and clear errors."""

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError(
                f"DatasetCatalog.register({name!r}, ...) wants a callable, got {type(func).__name__}"
            )
        if name in self:
            raise KeyError(f"Dataset {name!r} is already registered; call DatasetCatalog.remove first")
        self[name] = func

    def get(self, name: str) -> list[dict]:  # type: ignore[override]
        """Call the registered loader and return its list of dataset dicts."""
        if name not in self:
            raise KeyError(
                f"Dataset {name!r} is not registered. Registered datasets: {', '.join(sorted(self))}"
            )
        dicts = self[name]()
        if not isinstance(dicts, list):
            raise TypeError(f"The loader of dataset {name!r} returned {type(dicts).__name__}, not a list")
        return dicts

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


DatasetCatalog = _DatasetCatalog()


class Metadata:
    """Per-dataset facts with attribute access. A field, once set, may only be set again to the
    same value (so two registrations cannot silently disagree)."""

    _RENAMED = {
        "class_names": "thing_classes",
        "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
    }

    def __init__(self, name: str = "", **kwargs: Any):
        self.__dict__["name"] = name
        self.set(**kwargs)

    def __getattr__(self, key: str) -> Any:
        if key in self._RENAMED:
            return getattr(self, self._RENAMED[key])
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(
            f"Metadata of dataset {self.__dict__.get('name')!r} has no field {key!r}; "
            f"available: {sorted(k for k in self.__dict__ if k != 'name')}"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self._RENAMED:
            key = self._RENAMED[key]
        if key in self.__dict__ and key != "name":
            old = self.__dict__[key]
            if old != value:
                raise ValueError(
                    f"Metadata field {key!r} of dataset {self.name!r} is already {old!r}; "
                    f"refusing to change it to {value!r}"
                )
            return
        self.__dict__[key] = value

    def set(self, **kwargs: Any) -> Metadata:
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        return f"Metadata({', '.join(f'{k}={v!r}'[:80] for k, v in self.__dict__.items())})"


class _MetadataCatalog(dict):
    """A dict name -> Metadata; `get` creates an empty entry on first use, as in Detectron2."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


MetadataCatalog = _MetadataCatalog()

__all__ = ["DatasetCatalog", "Metadata", "MetadataCatalog"]
