"""Distributed helpers over `torch.distributed`. Every function also works without an
initialised process group (a single process is world size 1, rank 0).

The local process group (the workers of one machine) is created by `launch` and used for
`get_local_rank` / `get_local_size`.

Under the NCCL backend collectives only accept CUDA tensors: `all_reduce_mean` moves its
tensor to this worker's current CUDA device (set by `launch`) and returns the result on the
tensor's own device; the object collectives (`all_gather`, `broadcast_object`) pass their
buffers through the current CUDA device the same way (PyTorch does it for them).
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.distributed as dist

_LOCAL_PROCESS_GROUP: dist.ProcessGroup | None = None


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def get_local_rank() -> int:
    """Rank of this worker among the workers of its machine."""
    if not is_dist_initialized():
        return 0
    if _LOCAL_PROCESS_GROUP is None:
        return int(os.environ.get("LOCAL_RANK", "0"))
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of workers on this machine."""
    if not is_dist_initialized():
        return 1
    if _LOCAL_PROCESS_GROUP is None:
        return int(os.environ.get("LOCAL_WORLD_SIZE", str(get_world_size())))
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the group of workers that share this machine. Every rank must call it (it is a
    collective), once, right after `init_process_group`."""
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("the local process group already exists")
    world_size = get_world_size()
    if world_size % num_workers_per_machine:
        raise ValueError(
            f"world size {world_size} is not a multiple of {num_workers_per_machine} workers per machine"
        )
    machine = get_rank() // num_workers_per_machine
    for m in range(world_size // num_workers_per_machine):
        ranks = list(range(m * num_workers_per_machine, (m + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if m == machine:
            _LOCAL_PROCESS_GROUP = cast(dist.ProcessGroup, group)  # this rank is a member


def collective_device() -> torch.device:
    """Where tensors must be for a collective: the current CUDA device under NCCL, else the CPU."""
    if is_dist_initialized() and dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize() -> None:
    """Barrier across all workers; a no-op in a single process."""
    if get_world_size() == 1:
        return
    device = collective_device()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def all_gather(data: Any) -> list[Any]:
    """Gather a picklable object from every rank; returns the list ordered by rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    out: list[object] = [None] * world_size
    dist.all_gather_object(out, data)
    return out


def broadcast_object(data: Any, src: int = 0) -> Any:
    """Rank `src`'s object, on every rank."""
    if get_world_size() == 1:
        return data
    box = [data]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over all ranks (a new tensor; NaN/inf on any rank propagate to all)."""
    world_size = get_world_size()
    if world_size == 1:
        return tensor.clone()
    out = tensor.to(collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / world_size).to(tensor.device)


def shared_random_seed() -> int:
    """A random int drawn on rank 0 and shared by every rank."""
    seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return int(broadcast_object(seed))


def gather_on_main(items: list) -> list | None:
    """Every rank's `items` concatenated in rank order, on the main process; None on the others.
    A collective: every rank must call it."""
    gathered = all_gather(items)
    if not is_main_process():
        return None
    return [item for rank_items in gathered for item in rank_items]
