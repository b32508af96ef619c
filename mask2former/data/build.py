"""Data loaders.

Training (`build_detection_train_loader`): an infinite stream of per-GPU batches (lists of mapped
dicts). The order is fixed by one seed: every epoch is a `torch.randperm` of the whole dataset
drawn from `torch.Generator().manual_seed(seed + epoch)`, split across ranks, cut into batches
(within aspect-ratio groups when DATALOADER.ASPECT_RATIO_GROUPING). Each sample's augmentation
is seeded from (seed, its position in the stream), so the result does not depend on the number
of workers or on any other random call in the process (no global random state is touched).

Resuming: pass the same `seed` and `start_iter` = the number of iterations already done. The
loader then skips that many batches by index arithmetic and yields exactly the batches (images
and augmentations) an uninterrupted run would have seen from that iteration on. When cfg.SEED
is negative a seed is drawn at random (shared by all ranks) and logged; keep it (e.g. in the
checkpoint) to resume.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.utils.data as torchdata
from PIL import Image

from ..utils.dist import get_rank, get_world_size, shared_random_seed
from .catalog import DatasetCatalog
from .dataset_mappers import build_dataset_mapper
from .detection_utils import DatasetFormatError

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: list) -> list:
    """Batches stay lists of dicts; the model pads images itself."""
    return batch


def get_detection_dataset_dicts(names, filter_empty: bool = True) -> list[dict]:
    """Concatenate the registered datasets `names`; drop images with no non-crowd instance
    when `filter_empty` and the datasets carry "annotations" (instance datasets)."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("No dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts = []
    for name in names:
        d = DatasetCatalog.get(name)
        if not d:
            raise ValueError(f"Dataset {name!r} is empty")
        dicts.extend(d)
    if filter_empty and "annotations" in dicts[0]:
        before = len(dicts)
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
        logger.info("Removed %d images with no usable annotations; %d left", before - len(dicts), len(dicts))
        if not dicts:
            raise ValueError(f"Every image of {names} was filtered out for having no non-crowd annotation")
    return dicts


def _aspect_groups(dicts: list[dict]) -> np.ndarray:
    """Per image: 1 if wider than tall, else 0. Reads image headers for dicts with no size."""
    groups = np.zeros(len(dicts), dtype=np.int64)
    for i, d in enumerate(dicts):
        if "height" in d and "width" in d:
            h, w = d["height"], d["width"]
        else:
            try:
                with Image.open(d["file_name"]) as im:
                    w, h = im.size
            except OSError as e:
                raise DatasetFormatError(f"Cannot read the size of image {d['file_name']}: {e}") from e
        groups[i] = int(w > h)
    return groups


class TrainingBatchSampler(torchdata.Sampler):
    """Infinite, seeded, sharded stream of per-rank batches of (position, dataset index).

    Args:
        size: dataset length.
        batch_size: images per rank per batch.
        seed: shuffling seed, identical on every rank.
        groups: optional [size] int array; batches then hold one group only.
        start_iter: batches to skip (for resuming).
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, groups: np.ndarray | None = None, start_iter: int = 0
    ):
        if size <= 0 or batch_size <= 0:
            raise ValueError(
                f"TrainingBatchSampler needs size > 0 and batch_size > 0, got {size}, {batch_size}"
            )
        self.size, self.batch_size, self.seed = size, batch_size, int(seed)
        self.groups = groups
        self.start_iter = int(start_iter)
        self.rank, self.world_size = get_rank(), get_world_size()

    def _indices(self) -> Iterator[int]:
        """This rank's share of the infinite shuffled index stream."""
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.size, generator=g)[self.rank :: self.world_size].tolist()

    def _batches(self) -> Iterator[list[int]]:
        if self.groups is None:
            it = self._indices()
            while True:
                yield list(itertools.islice(it, self.batch_size))
        buckets: dict[int, list[int]] = {}
        for idx in self._indices():
            b = buckets.setdefault(int(self.groups[idx]), [])
            b.append(idx)
            if len(b) == self.batch_size:
                yield list(b)
                b.clear()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it, batch in enumerate(self._batches()):
            if it < self.start_iter:
                continue
            base = (it * self.world_size + self.rank) * self.batch_size
            yield [(base + j, idx) for j, idx in enumerate(batch)]


class MapDataset(torchdata.Dataset):
    """dataset dicts + mapper. Indexed by (position, index) in training: a mapper with
    `takes_rng = True` is then called as `mapper(dataset_dict, rng)` with a `random.Random`
    seeded from (seed, position), so its augmentation depends on nothing else that ran in the
    process; other mappers are called as `mapper(dataset_dict)`. Indexed by plain index for
    inference. With `skip_bad_samples`, an unreadable sample is logged and replaced by the next index."""

    def __init__(self, dicts: list[dict], mapper, seed: int | None = None, skip_bad_samples: bool = False):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed
        self.skip_bad_samples = skip_bad_samples

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key):
        pos, idx = key if isinstance(key, tuple) else (None, key)
        extra = {}
        if getattr(self.mapper, "takes_rng", False) and pos is not None and self.seed is not None:
            extra["rng"] = random.Random((self.seed * 1_000_003 + pos) % (2**32))
        for attempt in range(len(self.dicts)):
            d = self.dicts[(idx + attempt) % len(self.dicts)]
            try:
                return self.mapper(dict(d), **extra)
            except (DatasetFormatError, FileNotFoundError) as e:
                if not self.skip_bad_samples:
                    raise
                logger.warning("Skipping a bad sample: %s", e)
        raise DatasetFormatError("Every sample of the dataset failed to load")


def build_detection_train_loader(
    cfg, mapper=None, *, start_iter: int = 0, seed: int | None = None, skip_bad_samples: bool = False
):
    """Infinite training loader over cfg.DATASETS.TRAIN: yields lists of
    SOLVER.IMS_PER_BATCH // world_size mapped dicts (see the module docstring for resuming).

    Args:
        mapper: callable dataset dict -> dict; default: the mapper named by INPUT.DATASET_MAPPER_NAME.
        start_iter: iterations already done (resume).
        seed: shuffling/augmentation seed; default cfg.SEED, or a shared random seed if negative.
        skip_bad_samples: log and skip unreadable samples instead of raising.
    """
    world = get_world_size()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total % world != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world})"
        )
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if seed is None:
        seed = int(cfg.SEED) if cfg.SEED >= 0 else shared_random_seed()
    logger.info("Training data: %d images, seed %d, start_iter %d", len(dicts), seed, start_iter)
    groups = _aspect_groups(dicts) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    sampler = TrainingBatchSampler(len(dicts), total // world, seed, groups, start_iter)
    dataset = MapDataset(dicts, mapper or build_dataset_mapper(cfg, True), seed, skip_bad_samples)
    return torchdata.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        collate_fn=trivial_batch_collator,
    )


class InferenceSampler(torchdata.Sampler):
    """Each rank gets a contiguous, ordered slice of [0, size)."""

    def __init__(self, size: int):
        rank, world = get_rank(), get_world_size()
        per = (size - 1) // world + 1 if size else 0
        self.indices = list(range(min(rank * per, size), min((rank + 1) * per, size)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_detection_test_loader(cfg, dataset_name, mapper=None, batch_size: int = 1) -> torchdata.DataLoader:
    """Ordered loader over one (or several) registered datasets with the inference mapper (or
    `mapper`); batches are lists of dicts."""
    dicts = get_detection_dataset_dicts(dataset_name, filter_empty=False)
    dataset = MapDataset(dicts, mapper or build_dataset_mapper(cfg, False))
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset)),
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        collate_fn=trivial_batch_collator,
    )


__all__ = [
    "InferenceSampler",
    "MapDataset",
    "TrainingBatchSampler",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "trivial_batch_collator",
]
