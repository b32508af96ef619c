"""Turning one image's query predictions into semantic, panoptic and instance results.

Vectorised: each function works on whole tensors and synchronises with the host at most once per
image (panoptic: to number the kept segments; instance: to drop stuff classes), unlike a per-query
Python loop. No boolean-mask indexing, `bincount` or `.item()` on the device: those synchronise too.

Shape shorthand: Q queries, K classes (K + 1 logits with "no object"), H, W output size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.linear import linear
from ..structures import Boxes, Instances


def sem_seg_postprocess(
    result: Tensor, img_size: tuple[int, int], output_height: int, output_width: int
) -> Tensor:
    """Crop padding off [C, Hp, Wp] predictions and resize them to the output size: [C, H, W]."""
    result = result[:, : img_size[0], : img_size[1]]
    if tuple(result.shape[-2:]) == (output_height, output_width):
        return result  # bilinear resizing to the same size is the identity
    return F.interpolate(
        result[None], size=(output_height, output_width), mode="bilinear", align_corners=False
    )[0]


def semantic_inference(mask_cls: Tensor, mask_probs: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """mask_cls [Q, K+1] logits, mask_probs [Q, H, W] (sigmoid of the mask logits) -> per-class
    scores float32 [K, H, W], summed in `dtype` (bfloat16: the model's low-precision inference)."""
    return class_mask_scores(mask_cls.softmax(-1)[..., :-1], mask_probs, dtype)


def class_mask_scores(class_probs: Tensor, mask_probs: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """class_probs [Q, K] (no "no object"), mask_probs [Q, H, W] -> sum over queries float32
    [K, H, W], the products taken in `dtype` (accumulated in float32 also in bfloat16)."""
    q, h, w = mask_probs.shape
    # [K, Q] x [Q, H*W] as a linear layer whose "weight" is the masks: on oneDNN in CPU inference
    # (float32: 1.6x faster than einsum's batched matmul there; bfloat16: 5x faster than float32)
    weights = mask_probs.reshape(q, h * w).to(dtype).t()
    return linear(class_probs.t().to(dtype).contiguous(), weights).view(-1, h, w).float()


def panoptic_inference(
    mask_cls: Tensor,
    mask_probs: Tensor,
    *,
    is_thing: Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
    select_kept_first: bool | None = None,
) -> tuple[Tensor, list[dict]]:
    """mask_cls [Q, K+1] logits, mask_probs [Q, H, W] (sigmoid of the mask logits), is_thing
    bool [K] (best on the CPU, where it is read) -> (segment ids int32 [H, W] with 0 for
    unassigned, segments_info).

    A query is kept when its best class is not "no object" and scores above
    `object_mask_threshold`. Each pixel goes to the kept query with the highest score * mask
    probability, inside that query's mask (prob >= 0.5). A segment survives when it keeps at least
    `overlap_threshold` of its own mask; all segments of one stuff class share one id.
    Each segment's info carries its "score" (class probability; a stuff segment merged from several
    queries has the highest of theirs).

    `select_kept_first` (default: on the CPU) picks the kept queries before touching the masks, so
    the work scales with the kept queries; that reads `keep` on the host, a second synchronisation
    on a GPU, where all queries are processed with the others masked out instead. Same result."""
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = mask_cls.softmax(-1).max(-1)  # [Q]
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)  # [Q]
    if select_kept_first is None:
        select_kept_first = mask_probs.device.type == "cpu"
    if select_kept_first:
        kept = keep.nonzero().view(-1)  # [N]
        if len(kept) == 0:
            return torch.zeros(mask_probs.shape[-2:], dtype=torch.int32, device=mask_probs.device), []
        scores, labels, keep, mask_probs = scores[kept], labels[kept], keep[kept], mask_probs[kept]
    num_queries = len(scores)
    # Queries that are not kept take part with a weight of -1, below any kept query's (>= 0): a pixel
    # goes to the first kept query of highest score * probability, as if the others were removed.
    weighted = torch.where(keep.view(-1, 1, 1), scores.view(-1, 1, 1) * mask_probs, -1.0)  # [Q, H, W]
    mask_ids = weighted.argmax(0)  # [H, W]
    foreground = mask_probs >= 0.5  # [Q, H, W]
    inside = foreground.gather(0, mask_ids[None])[0]  # [H, W]: pixel inside its winner's mask
    flat_ids = mask_ids.flatten()
    won_area = torch.zeros(num_queries, dtype=torch.long, device=mask_ids.device)
    won_area.scatter_add_(0, flat_ids, torch.ones_like(flat_ids))
    final_area = torch.zeros_like(won_area).scatter_add_(0, flat_ids, inside.flatten().long())
    own_area = foreground.flatten(1).sum(1)
    valid = keep & (won_area > 0) & (own_area > 0) & (final_area > 0)
    valid &= won_area.double() >= overlap_threshold * own_area.double()
    valid_cpu, classes_cpu, scores_cpu = (
        torch.stack([valid.float(), labels.float(), scores.float()]).cpu().tolist()
    )  # the one host transfer
    is_thing_cpu = is_thing.tolist()
    segment_of_query = [0] * num_queries
    segments_info: list[dict] = []
    stuff_ids: dict[int, int] = {}
    for k in range(num_queries):
        if not valid_cpu[k]:
            continue
        cls = int(classes_cpu[k])
        thing = bool(is_thing_cpu[cls])
        if not thing and cls in stuff_ids:
            segment_of_query[k] = stuff_ids[cls]
            merged = segments_info[stuff_ids[cls] - 1]
            merged["score"] = max(merged["score"], scores_cpu[k])
            continue
        segment_id = len(segments_info) + 1
        segments_info.append({"id": segment_id, "isthing": thing, "category_id": cls, "score": scores_cpu[k]})
        if not thing:
            stuff_ids[cls] = segment_id
        segment_of_query[k] = segment_id
    lut = torch.tensor(segment_of_query, dtype=torch.int32).to(mask_probs.device, non_blocking=True)
    panoptic_seg = torch.where(inside, lut[mask_ids], 0).to(torch.int32)
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: Tensor,
    binary: Tensor,
    mask_probs: Tensor,
    *,
    max_detections: int,
    is_thing: Tensor | None,
) -> Instances:
    """mask_cls [Q, K+1], binary masks bool [Q, H, W] (mask logits > 0) and mask_probs [Q, H, W]
    (the sigmoid of the logits) -> the top
    `max_detections` (query, class) pairs as Instances sorted by score: `pred_masks` bool
    [N, H, W], `pred_boxes` (tight boxes of the masks), `scores` (class probability x mean mask
    probability inside the mask), `pred_classes`. With `is_thing` bool [K] given (panoptic
    inference on; best on the CPU, where it is read), stuff classes are dropped: the selected labels
    are read on the host (the one synchronisation) and the thing pairs picked there.

    A query's mask, box and mask score do not depend on the class it is paired with, so they
    are computed once per query and gathered for the selected pairs."""
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    probs = mask_cls.softmax(-1)[:, :-1]  # [Q, K]
    k = min(max_detections, num_queries * num_classes)
    top_scores, top_idx = probs.flatten().topk(k, sorted=True)
    labels = top_idx % num_classes
    queries = torch.div(top_idx, num_classes, rounding_mode="floor")
    if is_thing is not None:
        thing = is_thing.cpu()[labels.cpu()]  # the one host transfer
        picked = thing.nonzero().view(-1).to(labels.device, non_blocking=True)  # [N]
        top_scores, labels, queries = top_scores[picked], labels[picked], queries[picked]
    inside = binary.flatten(1).to(mask_probs.dtype)  # [Q, H*W], 1.0 inside the mask
    inside_prob = torch.bmm(mask_probs.flatten(1)[:, None], inside[:, :, None]).view(-1)  # [Q]
    mask_scores = inside_prob / (inside.sum(1) + 1e-6)  # [Q]
    boxes = Boxes.from_masks(binary).tensor  # [Q, 4]
    scores = top_scores * mask_scores[queries]
    order = scores.argsort(descending=True)
    queries = queries[order]
    return Instances(
        (binary.shape[-2], binary.shape[-1]),
        pred_masks=binary[queries],
        pred_boxes=Boxes(boxes[queries]),
        scores=scores[order],
        pred_classes=labels[order],
    )
