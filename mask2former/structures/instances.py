"""Per-image sets of instances (ground truth or predictions), as Detectron2 users know them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Boxes:
    """Axis-aligned boxes, `tensor` [N, 4] as (x0, y0, x1, y1) in pixels."""

    def __init__(self, tensor: Tensor):
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            raise ValueError(f"Boxes wants a [N, 4] tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    @classmethod
    def from_masks(cls, masks: Tensor) -> Boxes:
        """Tight boxes around boolean masks [N, H, W]; an empty mask gives a zero box."""
        if masks.numel() == 0:
            return cls(torch.zeros(masks.shape[0], 4, device=masks.device))
        rows = masks.amax(dim=2)  # [N, H]: any pixel in the row (amax is faster than any)
        cols = masks.amax(dim=1)  # [N, W]
        h, w = masks.shape[-2:]
        ar_h = torch.arange(h, device=masks.device)
        ar_w = torch.arange(w, device=masks.device)
        y0 = torch.where(rows, ar_h, h).amin(1)
        y1 = torch.where(rows, ar_h + 1, 0).amax(1)
        x0 = torch.where(cols, ar_w, w).amin(1)
        x1 = torch.where(cols, ar_w + 1, 0).amax(1)
        boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
        return cls(boxes * rows.any(1, keepdim=True))

    def area(self) -> Tensor:
        return (self.tensor[:, 2] - self.tensor[:, 0]) * (self.tensor[:, 3] - self.tensor[:, 1])

    def to(self, device: Any) -> Boxes:
        return Boxes(self.tensor.to(device))

    def __getitem__(self, item) -> Boxes:
        t = self.tensor[item]
        return Boxes(t.view(-1, 4))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"


class Instances:
    """A set of N instances of one image: `image_size` (h, w) plus fields of length N
    (`pred_masks`, `scores`, `pred_classes`, `pred_boxes`, `gt_classes`, `gt_masks`, ...)."""

    def __init__(self, image_size: tuple[int, int], **fields: Any):
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for k, v in fields.items():
            self.set(k, v)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        if name not in self._fields:
            raise AttributeError(f"Instances has no field {name!r}; fields: {list(self._fields)}")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        if self._fields:
            n = len(self)
            if len(value) != n:
                raise ValueError(f"field {name!r} has length {len(value)}, the other fields {n}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, device: Any) -> Instances:
        return Instances(
            self._image_size, **{k: v.to(device) if hasattr(v, "to") else v for k, v in self._fields.items()}
        )

    def __getitem__(self, item) -> Instances:
        if isinstance(item, int):
            item = slice(item, None, len(self)) if item != -1 else slice(item, None)
        return Instances(self._image_size, **{k: v[item] for k, v in self._fields.items()})

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {type(v).__name__}" for k, v in self._fields.items())
        return f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, image_width={self._image_size[1]}, fields=[{fields}])"
