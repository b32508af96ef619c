"""A batch of images of different sizes, zero-padded to one tensor."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


class ImageList:
    """`tensor` [B, C, Hp, Wp] holds the images padded at the bottom/right; `image_sizes` keeps
    each image's (h, w) before padding."""

    def __init__(self, tensor: Tensor, image_sizes: list[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    @classmethod
    def from_tensors(
        cls, tensors: list[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> ImageList:
        """Pad [C, H, W] tensors to a common size, rounded up to `size_divisibility` when > 1."""
        if not tensors:
            raise ValueError("ImageList.from_tensors got an empty list of images")
        for t in tensors:
            if t.dim() != 3 or t.shape[0] != tensors[0].shape[0]:
                raise ValueError(
                    f"images must be [C, H, W] with the same C, got shapes {[tuple(x.shape) for x in tensors]}"
                )
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            max_h = -(-max_h // size_divisibility) * size_divisibility
            max_w = -(-max_w // size_divisibility) * size_divisibility
        if len(tensors) == 1:
            h, w = sizes[0]
            batch = F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value).unsqueeze(0)
        else:
            batch = tensors[0].new_full((len(tensors), tensors[0].shape[0], max_h, max_w), pad_value)
            for b, t in zip(batch, tensors):
                b[:, : t.shape[-2], : t.shape[-1]].copy_(t)
        return cls(batch.contiguous(), sizes)

    def to(self, device) -> ImageList:
        return ImageList(self.tensor.to(device), self.image_sizes)

    def __getitem__(self, idx: int) -> Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]


__all__ = ["ImageList"]
