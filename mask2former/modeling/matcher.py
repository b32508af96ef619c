"""Hungarian matching between predicted queries and ground-truth masks (one-to-one, per image).

Shape shorthand in this module:
    B  images         Q  queries          K  classes (+1 for "no object" in the logits)
    N  target masks of one image          P  sampled points          H, W  map size

The cost of assigning query q to target n is
    cost_class * (-softmax(logits_q)[label_n])
    + cost_mask * mean over P points of sigmoid BCE(mask_q, target_n)
    + cost_dice * (1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)),
with predictions and targets read at the same P uniform points per image (one draw of shape
[1, P, 2]). Costs are computed in fp32 with autocast off, so fp16/bf16 training cannot overflow
them. A non-finite cost (NaN or +-inf, e.g. from a diverged prediction) is replaced by
+-`MAX_COST`, so scipy's solver never sees one: a NaN counts as the worst possible match.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CfgNode
from ..layers.extension import compiled_op_available
from . import point_sampling
from .point_sampling import sample_shared_points

__all__ = ["MAX_COST", "HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]

# Replacement for non-finite costs. Finite costs are at most a few hundred for sane weights, so this
# bound keeps them ordered while leaving scipy's float64 sums exact enough.
MAX_COST = 1e8


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean sigmoid BCE between every prediction and every target.

    BCE(x, t) = softplus(x) - x * t, so the [Q, N] sum over points is one softplus row sum and
    one matrix product (the same value as summing BCE-with-logits element-wise).

    Args:
        inputs: [Q, P] logits.
        targets: [N, P] values in [0, 1].
    Returns:
        [Q, N] mean over points of BCE-with-logits(inputs[q], targets[n]).
    """
    return _sigmoid_ce_cost(_LogitTerms.of(inputs), inputs, targets)


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice loss between every prediction and every target.

    Args:
        inputs: [Q, P] logits (a sigmoid is applied).
        targets: [N, P] values in [0, 1].
    Returns:
        [Q, N] 1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1).
    """
    return _dice_cost(_LogitTerms.of(inputs), targets)


class _LogitTerms(NamedTuple):
    """What both mask costs read from the [Q, P] point logits x: sigmoid(x) [Q, P] and the row sums of
    softplus(x) and of sigmoid(x) [Q]."""

    sigmoid: Tensor
    softplus_sum: Tensor
    sigmoid_sum: Tensor

    @staticmethod
    def of(x: Tensor) -> _LogitTerms:
        """float32 logits on the CPU go through the compiled `mask2former::sigmoid_and_sums`, one pass
        over x (0.23 against 1.1 ms for [100, 12544] in PyTorch ops on 2 threads of this project's
        development machine); elsewhere PyTorch ops."""
        if x.device.type == "cpu" and x.dtype == torch.float32 and compiled_op_available("cpu"):
            return _LogitTerms(*torch.ops.mask2former.sigmoid_and_sums(x))
        sigmoid = x.sigmoid()
        return _LogitTerms(sigmoid, F.softplus(x).sum(-1), sigmoid.sum(-1))


def _sigmoid_ce_cost(terms: _LogitTerms, inputs: Tensor, targets: Tensor) -> Tensor:
    """[Q, N] mean BCE of `batch_sigmoid_ce_cost` from the logits' terms."""
    return (terms.softplus_sum[:, None] - inputs @ targets.T) / inputs.shape[1]


def _dice_cost(terms: _LogitTerms, targets: Tensor) -> Tensor:
    """[Q, N] dice cost of `batch_dice_cost` from the logits' terms."""
    numerator = 2 * (terms.sigmoid @ targets.T)  # [Q, N]
    denominator = terms.sigmoid_sum[:, None] + targets.sum(-1)[None, :]  # [Q, N]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted cost (no learnable state)."""

    def __init__(self, cost_class: float, cost_mask: float, cost_dice: float, num_points: int):
        """
        Args:
            cost_class: weight of the classification cost.
            cost_mask: weight of the sigmoid BCE mask cost.
            cost_dice: weight of the dice mask cost.
            num_points: P, uniform points per image at which masks are compared (> 0).
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """The constructor's keyword arguments from MODEL.MASK_FORMER.{CLASS_WEIGHT, MASK_WEIGHT,
        DICE_WEIGHT, TRAIN_NUM_POINTS}."""
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    def cost_matrix(self, logits: Tensor, masks: Tensor, tgt_labels: Tensor, tgt_masks: Tensor) -> Tensor:
        """Matching cost of one image, fp32 and finite, on the predictions' device.

        Args:
            logits: [Q, K+1] class logits.
            masks: [Q, H, W] mask logits.
            tgt_labels: int64 [N] class ids in [0, K).
            tgt_masks: [N, Ht, Wt] bool or float masks covering the same (padded) image as `masks`.
        Returns:
            [Q, N] float32 cost, NaN/inf replaced by +-MAX_COST.
        """
        device = masks.device
        with torch.autocast(device_type=device.type, enabled=False):
            prob = logits.float().softmax(-1)  # [Q, K+1]
            cost_class = -prob[:, tgt_labels]  # [Q, N]
            point_coords = point_sampling.uniform_points((1, self.num_points, 2), device, torch.float32)
            # Every mask at the same points, one draw per image ([1, P, 2]).
            tgt_points = sample_shared_points(tgt_masks.to(device=device, dtype=torch.float32), point_coords)
            out_points = sample_shared_points(masks.float(), point_coords)  # [Q, P]
            terms = _LogitTerms.of(out_points)
            cost_mask = _sigmoid_ce_cost(terms, out_points, tgt_points)  # [Q, N]
            cost_dice = _dice_cost(terms, tgt_points)  # [Q, N]
            cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        return torch.nan_to_num(cost, nan=MAX_COST, posinf=MAX_COST, neginf=-MAX_COST)  # [Q, N]

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H, W] (other keys are ignored).
            targets: B dicts with "labels" int64 [N_i] and "masks" [N_i, Ht, Wt] (bool or float),
                padded like the batch the predictions cover.
        Returns:
            B pairs (query indices, target indices), int64 CPU tensors of length min(Q, N_i),
            sorted by query index; empty for an image without targets.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if pred_logits.dim() != 3 or pred_masks.dim() != 4 or pred_logits.shape[:2] != pred_masks.shape[:2]:
            raise ValueError(
                "HungarianMatcher expects pred_logits [B, Q, K+1] and pred_masks [B, Q, H, W], got "
                f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
            )
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {pred_logits.shape[0]} predictions but {len(targets)} targets"
            )
        costs: list[Tensor | None] = []  # per image [Q, N_i] on the device, None without targets
        for b, target in enumerate(targets):
            labels, masks = target["labels"], target["masks"]
            if masks.dim() != 3 or labels.shape != masks.shape[:1]:
                raise ValueError(
                    f"target {b}: expected labels [N] and masks [N, H, W], got {tuple(labels.shape)} "
                    f"and {tuple(masks.shape)}"
                )
            if labels.numel() == 0:
                costs.append(None)
                continue
            costs.append(
                self.cost_matrix(pred_logits[b], pred_masks[b], labels.to(pred_logits.device), masks)
            )
        from scipy.optimize import linear_sum_assignment  # here: building a model for inference skips SciPy

        present = [c for c in costs if c is not None]
        # all costs in one transfer
        on_host = torch.cat([c.flatten() for c in present]).cpu() if present else torch.empty(0)
        indices, offset = [], 0
        for cost in costs:
            if cost is None:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            block = on_host[offset : offset + cost.numel()].view(cost.shape)
            offset += cost.numel()
            rows, cols = linear_sum_assignment(block.numpy())  # rows sorted ascending
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
