"""Set criterion: Hungarian matching, then class cross-entropy and point-sampled mask losses.

Shape shorthand in this module:
    B  images          Q  queries          K  classes (the logits have K+1: the last is "no object")
    N  matched masks of the whole batch    P  points per mask          H, W  map size

For each decoder output (the final one, then each auxiliary one under deep supervision) the
criterion matches queries to targets, then computes
- `loss_ce`: cross-entropy over K+1 classes for every query (unmatched queries target "no object"),
  class weights `empty_weight` (1 for every class, `eos_coef` for "no object"), weighted mean;
- `loss_mask`: sigmoid BCE averaged over P importance-sampled points, summed over the N matched
  masks and divided by `num_masks`;
- `loss_dice`: 1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1) on the same points, summed over
  masks and divided by `num_masks`.
Points come from `get_uncertain_point_coords_with_randomness` on the matched predicted mask
(uncertainty -|logit|); target masks are read at the same points bilinearly. `num_masks` is the
number of target masks in the batch, averaged over processes when torch.distributed is initialised,
and at least 1; it stays a device tensor, so the criterion itself never waits on the host.
Returned losses are already multiplied by their weights; auxiliary output i gets the suffix `_{i}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CfgNode
from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["MatchedPairs", "SetCriterion", "build_criterion", "dice_loss", "sigmoid_ce_loss"]


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float | Tensor) -> Tensor:
    """Sigmoid BCE, mean over points, summed over masks, divided by `num_masks`.

    Args:
        inputs: [N, P] logits.
        targets: [N, P] values in [0, 1].
        num_masks: normaliser (float or 0-d tensor).
    Returns:
        0-d tensor.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")  # [N, P]
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float | Tensor) -> Tensor:
    """Dice loss 1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1), summed over masks / `num_masks`.

    Args:
        inputs: [N, P] logits (a sigmoid is applied).
        targets: [N, P] values in [0, 1].
        num_masks: normaliser (float or 0-d tensor).
    Returns:
        0-d tensor.
    """
    probs = inputs.sigmoid()  # [N, P]
    numerator = 2 * (probs * targets).sum(-1)  # [N]
    denominator = probs.sum(-1) + targets.sum(-1)  # [N]
    loss = 1 - (numerator + 1) / (denominator + 1)  # [N]
    return loss.sum() / num_masks


@dataclass(frozen=True)
class MatchedPairs:
    """The matcher's result for one decoder output, as the losses read it.

    indices: per image (query indices, target indices), from the matcher.
    batch_idx, src_idx: int64 [N], the image and the query of every matched pair, on the device.
    """

    indices: list[tuple[Tensor, Tensor]]
    batch_idx: Tensor
    src_idx: Tensor

    @classmethod
    def from_indices(cls, indices: list[tuple[Tensor, Tensor]], device: torch.device) -> MatchedPairs:
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])  # [N]
        src_idx = torch.cat([src for src, _ in indices])  # [N]
        return cls(indices, batch_idx.to(device), src_idx.to(device))

    def target_values(self, targets: list[dict[str, Tensor]], key: str) -> Tensor:
        """targets[b][key] of every matched pair, concatenated in pair order: [N, ...]."""
        return torch.cat([t[key][tgt.to(t[key].device)] for t, (_, tgt) in zip(targets, self.indices)])


def _aux_levels(weight_dict: dict[str, float]) -> int:
    """Number of auxiliary outputs the weight dict supervises (keys like `loss_ce_2` -> 3)."""
    levels = [int(key.rsplit("_", 1)[1]) for key in weight_dict if key.rsplit("_", 1)[-1].isdigit()]
    return max(levels) + 1 if levels else 0


class SetCriterion(nn.Module):
    """Mask2Former's training loss (see the module docstring)."""

    _LOSS_KEYS = {"labels": ("loss_ce",), "masks": ("loss_mask", "loss_dice")}
    empty_weight: Tensor  # buffer [K+1]

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: list[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: K, not counting "no object".
            matcher: assigns queries to targets.
            weight_dict: weight of every returned loss key (`loss_ce`, `loss_mask`, `loss_dice`, and
                `loss_ce_{i}`, ... for each supervised auxiliary output i). Auxiliary outputs are
                ignored when it has no `_{i}` keys (deep supervision off).
            eos_coef: class weight of "no object".
            losses: subset of "labels", "masks".
            num_points: P, points per mask for the mask losses.
            oversample_ratio: candidates per kept point for importance sampling (>= 1).
            importance_sample_ratio: fraction of the P points chosen by uncertainty.
        """
        super().__init__()
        unknown = [name for name in losses if name not in self._LOSS_KEYS]
        if unknown or not losses:
            raise ValueError(
                f"SetCriterion: losses must be a non-empty subset of {list(self._LOSS_KEYS)}, got {losses}"
            )
        needed = [key for name in losses for key in self._LOSS_KEYS[name] if key not in weight_dict]
        if needed:
            raise ValueError(f"SetCriterion: weight_dict has no weight for {needed}")
        if num_points <= 0:
            raise ValueError(f"SetCriterion: num_points must be positive, got {num_points}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.num_aux = _aux_levels(self.weight_dict)
        empty_weight = torch.ones(num_classes + 1)  # [K+1]
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """The constructor's keyword arguments from a config: the only reader of the loss keys of
        `MODEL.MASK_FORMER`.

        Reads MODEL.MASK_FORMER.{CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT,
        DEEP_SUPERVISION, DEC_LAYERS, TRAIN_NUM_POINTS, OVERSAMPLE_RATIO, IMPORTANCE_SAMPLE_RATIO} and
        MODEL.SEM_SEG_HEAD.NUM_CLASSES; the matcher is `HungarianMatcher.from_config(cfg)`. With deep
        supervision, DEC_LAYERS - 1 auxiliary outputs are supervised (aux 0 is the prediction from the
        learnable queries), with the final output's weights.
        """
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:
            base = dict(weight_dict)
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{key}_{i}": value for key, value in base.items()})
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(**HungarianMatcher.from_config(cfg)),
            "weight_dict": weight_dict,
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ["labels", "masks"],
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted losses of the final and auxiliary outputs.

        Args:
            outputs: "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H, W], optionally
                "aux_outputs": a list of dicts with the same two keys.
            targets: B dicts with "labels" int64 [N_i] and "masks" [N_i, Ht, Wt] (bool or float),
                every image padded to the same (batch) size.
        Returns:
            {"loss_ce", "loss_mask", "loss_dice"} (per `losses`) plus the same keys with suffix
            `_{i}` for auxiliary output i; each a weighted 0-d tensor.
        """
        self._check_targets(outputs["pred_logits"], targets)
        device = outputs["pred_logits"].device
        # Every decoder output's matching and mask loss samples the target masks as float32:
        # convert them once here rather than once per output.
        targets = [{**t, "masks": t["masks"].to(device=device, dtype=torch.float32)} for t in targets]
        num_masks = self._num_masks(targets, device)
        losses = self._output_losses(outputs, targets, num_masks, suffix="")
        if self.num_aux:
            aux_outputs = outputs.get("aux_outputs", [])
            if len(aux_outputs) != self.num_aux:
                raise ValueError(
                    f"SetCriterion: weight_dict supervises {self.num_aux} auxiliary outputs but the model "
                    f"returned {len(aux_outputs)} (check MODEL.MASK_FORMER.DEC_LAYERS)"
                )
            for i, aux in enumerate(aux_outputs):
                losses.update(self._output_losses(aux, targets, num_masks, suffix=f"_{i}"))
        return losses

    def _output_losses(self, outputs: dict, targets: list[dict[str, Tensor]], num_masks: Tensor, suffix: str):
        """Match one decoder output, then its weighted losses with keys ending in `suffix`."""
        matched = MatchedPairs.from_indices(self.matcher(outputs, targets), outputs["pred_logits"].device)
        losses: dict[str, Tensor] = {}
        if "labels" in self.losses:
            losses.update(self.loss_labels(outputs["pred_logits"], targets, matched))
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs["pred_masks"], targets, matched, num_masks))
        weighted = {}
        for key, value in losses.items():
            if key + suffix not in self.weight_dict:
                raise KeyError(f"SetCriterion: weight_dict has no weight for {key + suffix!r}")
            weighted[key + suffix] = value * self.weight_dict[key + suffix]
        return weighted

    def loss_labels(
        self, pred_logits: Tensor, targets: list[dict[str, Tensor]], matched: MatchedPairs
    ) -> dict[str, Tensor]:
        """Cross-entropy over K+1 classes with `empty_weight`: pred_logits [B, Q, K+1], targets B
        dicts with "labels" int64 [N_i] -> {"loss_ce": 0-d tensor} (unweighted)."""
        logits = pred_logits.float()  # [B, Q, K+1]
        matched_labels = matched.target_values(targets, "labels")  # [N]
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[matched.batch_idx, matched.src_idx] = matched_labels.to(logits.device)  # [B, Q]
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self, pred_masks: Tensor, targets: list[dict[str, Tensor]], matched: MatchedPairs, num_masks: Tensor
    ) -> dict[str, Tensor]:
        """Sigmoid BCE and dice of the matched masks on importance-sampled points: pred_masks
        [B, Q, H, W] logits, targets B dicts with "masks" [N_i, Ht, Wt], num_masks a 0-d normaliser
        -> {"loss_mask", "loss_dice"}: 0-d tensors (unweighted)."""
        device = pred_masks.device
        with torch.autocast(device_type=device.type, enabled=False):
            src_masks = pred_masks[matched.batch_idx, matched.src_idx].float()[:, None]  # [N, 1, H, W]
            target_masks = matched.target_values(targets, "masks")  # [N, Ht, Wt]
            target_masks = target_masks.to(device=device, dtype=torch.float32)[:, None]  # [N, 1, Ht, Wt]
            with torch.no_grad():
                point_coords = get_uncertain_point_coords_with_randomness(
                    src_masks,
                    calculate_uncertainty,
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                )  # [N, P, 2]
                point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(
                    1
                )  # [N, P]
            point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)  # [N, P]
            return {
                "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
                "loss_dice": dice_loss(point_logits, point_labels, num_masks),
            }

    @staticmethod
    def _num_masks(targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """Target masks in the batch, averaged over processes, at least 1: a 0-d float tensor."""
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1)

    @staticmethod
    def _check_targets(pred_logits: Tensor, targets: list[dict[str, Tensor]]) -> None:
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"SetCriterion: {pred_logits.shape[0]} predictions but {len(targets)} targets")
        sizes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(sizes) > 1:
            raise ValueError(
                f"SetCriterion: target masks must be padded to the batch's padded size, got sizes {sorted(sizes)}"
            )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"weight_dict={self.weight_dict}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, importance_sample_ratio={self.importance_sample_ratio}"
        )


def build_criterion(cfg: CfgNode) -> SetCriterion:
    """The criterion of a config (see `SetCriterion.from_config`)."""
    return SetCriterion(**SetCriterion.from_config(cfg))
