"""Post-processing makes one host synchronisation per image (counted on the CPU path with
HostSyncCounter; tools/gpu_check.py counts the real ones on a GPU with CUDA's sync debug mode)."""

import pytest
import torch

from mask2former.inference.postprocessing import instance_inference, panoptic_inference
from mask2former.utils.host_sync import HostSyncCounter


def predictions(seed: int = 0, queries: int = 12, classes: int = 5, size: tuple[int, int] = (24, 32)):
    """mask_cls [Q, K+1], mask logits [Q, H, W] with confident queries, and is_thing [K]."""
    gen = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(queries, classes + 1, generator=gen) * 4
    mask_pred = torch.randn(queries, *size, generator=gen) * 6
    is_thing = torch.tensor([True, True, False, True, False][:classes])
    return mask_cls, mask_pred, is_thing


def test_counter_sees_what_would_synchronise():
    x = torch.randn(10)
    with HostSyncCounter("cpu") as counter:
        x[x > 0]  # boolean-mask indexing
        torch.bincount(x.long().abs())
        float(x.sum())
        host = x.cpu()  # a transfer ...
        host.tolist()  # ... then reading its copy is free
        torch.where(x > 0, x, 0)  # data-independent: free
    assert counter.count == 4, counter.events


@pytest.mark.parametrize("seed", range(4))
def test_panoptic_inference_synchronises_once(seed):
    mask_cls, mask_pred, is_thing = predictions(seed)
    with HostSyncCounter("cpu") as counter:
        counter.host(is_thing)
        panoptic_seg, segments = panoptic_inference(
            mask_cls,
            mask_pred.sigmoid(),
            is_thing=is_thing,
            object_mask_threshold=0.3,
            overlap_threshold=0.5,
            select_kept_first=False,  # the formulation a GPU runs (the CPU's default reads `keep` first)
        )
    assert counter.count == 1, counter.events
    assert segments and set(panoptic_seg.unique().tolist()) <= {0, *(s["id"] for s in segments)}


@pytest.mark.parametrize("is_thing_on", [True, False])
def test_instance_inference_synchronises_at_most_once(is_thing_on):
    mask_cls, mask_pred, is_thing = predictions()
    with HostSyncCounter("cpu") as counter:
        counter.host(is_thing)
        instances = instance_inference(
            mask_cls,
            mask_pred > 0,
            mask_pred.sigmoid(),
            max_detections=20,
            is_thing=is_thing if is_thing_on else None,
        )
    assert counter.count == (1 if is_thing_on else 0), counter.events
    if is_thing_on:
        assert is_thing[instances.pred_classes].all()
    assert len(instances) > 0


@pytest.mark.parametrize("select_kept_first", [False, True])
def test_panoptic_inference_matches_a_per_query_loop(select_kept_first):
    """The masked, sync-free formulation (GPU) and the kept-queries-first one (CPU) against the plain
    algorithm (keep, then assign pixels)."""
    for seed in range(6):
        mask_cls, mask_pred, is_thing = predictions(seed)
        probs = mask_pred.sigmoid()
        seg, segments = panoptic_inference(
            mask_cls,
            probs,
            is_thing=is_thing,
            object_mask_threshold=0.3,
            overlap_threshold=0.5,
            select_kept_first=select_kept_first,
        )
        scores, labels = mask_cls.softmax(-1).max(-1)
        kept = [q for q in range(len(scores)) if labels[q] != 5 and scores[q] > 0.3]
        expected = torch.zeros_like(seg)
        infos, stuff = [], {}
        if kept:
            ids = (scores[kept].view(-1, 1, 1) * probs[kept]).argmax(0)
            for k, q in enumerate(kept):
                won = ids == k
                own = probs[q] >= 0.5
                final = won & own
                if won.sum() == 0 or own.sum() == 0 or final.sum() == 0 or won.sum() < 0.5 * own.sum():
                    continue
                cls = int(labels[q])
                score = float(scores[q])
                if not is_thing[cls] and cls in stuff:
                    expected[final] = stuff[cls]
                    merged = infos[stuff[cls] - 1]
                    merged["score"] = max(merged["score"], score)
                    continue
                infos.append(
                    {"id": len(infos) + 1, "isthing": bool(is_thing[cls]), "category_id": cls, "score": score}
                )
                if not is_thing[cls]:
                    stuff[cls] = len(infos)
                expected[final] = len(infos)
        assert segments == infos
        assert torch.equal(seg, expected)


@pytest.mark.parametrize("select_kept_first", [False, True])
def test_panoptic_inference_without_kept_queries(select_kept_first):
    mask_cls, mask_pred, is_thing = predictions()
    seg, segments = panoptic_inference(
        mask_cls,
        mask_pred.sigmoid(),
        is_thing=is_thing,
        object_mask_threshold=1.0,  # no class probability exceeds it
        overlap_threshold=0.5,
        select_kept_first=select_kept_first,
    )
    assert segments == []
    assert seg.dtype == torch.int32 and seg.shape == mask_pred.shape[-2:] and not seg.any()
