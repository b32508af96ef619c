"""Start one worker per GPU (or per CPU process with gloo) and run `main_func` in each.

Three ways in:
- `--num-gpus N [--num-machines M --machine-rank R --dist-url tcp://host:port]`: this
  process spawns N local workers (torch.multiprocessing, start method "spawn").
- under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
  environment) or `srun` with several tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
  SLURM_NODELIST): this process is one worker; rank and world size come from there.
NCCL is used for CUDA devices, gloo for CPU.

Failures: when a spawned worker raises or dies, the others are terminated, and `launch`
raises `WorkerFailedError` naming the rank that failed first with its traceback, once.
Every collective runs with `timeout`, so a worker on another machine that waits for a
dead peer stops too, instead of hanging.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from mask2former.checkpoint import atomic_write
from mask2former.utils import dist as dist_utils

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

__all__ = ["DEFAULT_TIMEOUT", "WorkerFailedError", "backend_for_device", "launch"]


class WorkerFailedError(RuntimeError):
    """A spawned worker raised or died; the message names its rank."""


def backend_for_device(device: str) -> str:
    """ "nccl" for a CUDA device (MODEL.DEVICE "cuda", "cuda:1"), "gloo" otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: "gpu[03-05,09],cpu1" -> "gpu03"."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot read a host name from SLURM_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _environment_worker() -> tuple[int, int, int, int, str] | None:
    """(rank, world size, local rank, local size, init URL) when started by torchrun or by
    srun with several tasks; None when this process should spawn its own workers."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env:
        world = int(env["WORLD_SIZE"])
        local_size = int(env.get("LOCAL_WORLD_SIZE", world))
        return int(env["RANK"]), world, int(env["LOCAL_RANK"]), local_size, "env://"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        world = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_NNODES", "1"))
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        local_size = int(per_node) if per_node.isdigit() else world // nodes
        host = env.get("MASTER_ADDR") or _first_slurm_host(env["SLURM_NODELIST"])
        port = env.get("MASTER_PORT") or str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return int(env["SLURM_PROCID"]), world, int(env["SLURM_LOCALID"]), local_size, f"tcp://{host}:{port}"
    return None


def _init_worker(
    backend: str,
    init_method: str,
    world_size: int,
    rank: int,
    local_rank: int,
    local_size: int,
    timeout: datetime.timedelta,
) -> None:
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank}: NCCL needs CUDA device {local_rank}, but {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout
    )
    dist_utils.create_local_process_group(local_size)
    dist_utils.synchronize()


def launch(
    main_func: Callable[..., object],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: tuple = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    backend: str = "auto",
) -> None:
    """Run `main_func(*args)` in every worker (see the module docstring).

    Args:
        num_gpus_per_machine: workers per machine (one per GPU; CPU processes with gloo).
        num_machines, machine_rank: the machine layout for several machines.
        dist_url: "tcp://host:port" of machine 0; "auto" picks a free port on this machine.
        timeout: limit of every collective operation.
        backend: "nccl", "gloo", or "auto" (NCCL when CUDA is available, else gloo); pass
            `backend_for_device(cfg.MODEL.DEVICE)` so `MODEL.DEVICE cpu` uses gloo.
    """
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    from_env = _environment_worker()
    if from_env is not None:
        _warn_if_layout_ignored(num_gpus_per_machine, num_machines, world_size=from_env[1])
        _run_environment_worker(main_func, args, backend, from_env, timeout)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    dist_url = _check_machine_layout(num_machines, machine_rank, dist_url)
    _spawn_workers(
        main_func, args, backend, dist_url, timeout, num_gpus_per_machine, num_machines, machine_rank
    )


def _warn_if_layout_ignored(num_gpus_per_machine: int, num_machines: int, world_size: int) -> None:
    if num_gpus_per_machine * num_machines not in (1, world_size):
        logger.warning(
            "--num-gpus %d x --num-machines %d is ignored: the environment starts %d workers",
            num_gpus_per_machine,
            num_machines,
            world_size,
        )


def _run_environment_worker(
    main_func: Callable[..., object],
    args: tuple,
    backend: str,
    from_env: tuple[int, int, int, int, str],
    timeout: datetime.timedelta,
) -> None:
    """Run this process as the worker that torchrun or srun started."""
    rank, world_size, local_rank, local_size, init_method = from_env
    _init_worker(backend, init_method, world_size, rank, local_rank, local_size, timeout)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _check_machine_layout(num_machines: int, machine_rank: int, dist_url: str) -> str:
    """Validate the machine layout; returns the init URL ("auto" -> a free local port)."""
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank {machine_rank} is outside 0 .. {num_machines - 1}")
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://<machine 0>:<port>")
        return f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init across machines needs a file system shared by all of them")
    return dist_url


def _spawn_workers(
    main_func: Callable[..., object],
    args: tuple,
    backend: str,
    dist_url: str,
    timeout: datetime.timedelta,
    num_gpus_per_machine: int,
    num_machines: int,
    machine_rank: int,
) -> None:
    """Spawn this machine's workers and wait for them; the first failure is raised as
    WorkerFailedError (the others are terminated by torch.multiprocessing)."""
    world_size = num_machines * num_gpus_per_machine
    error_dir = tempfile.mkdtemp(prefix="mask2former_launch_")
    try:
        context = mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                backend,
                dist_url,
                args,
                timeout,
                error_dir,
            ),
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join():
                pass
        except ProcessException as e:
            raise WorkerFailedError(
                _describe_failure(e, error_dir, machine_rank, num_gpus_per_machine)
            ) from None
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., object],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    backend: str,
    dist_url: str,
    args: tuple,
    timeout: datetime.timedelta,
    error_dir: str,
) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        _init_worker(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine, timeout)
        main_func(*args)
    except BaseException:
        # Record when and how this rank failed, so the parent reports the first failure
        # (the others are usually peers losing their connection to it).
        # Written atomically, so the parent never reads half a report.
        report = f"{time.time()}\n{traceback.format_exc()}".encode()
        atomic_write(os.path.join(error_dir, f"rank{rank}"), lambda f: f.write(report))
        raise
    dist.destroy_process_group()


def _describe_failure(error: ProcessException, error_dir: str, machine_rank: int, per_machine: int) -> str:
    reports = []
    for name in os.listdir(error_dir):
        if name.startswith("."):  # a report still being written
            continue
        with open(os.path.join(error_dir, name)) as f:
            stamp, tb = f.read().split("\n", 1)
        reports.append((float(stamp), int(name.removeprefix("rank")), tb))
    if reports:
        reports.sort()
        _, rank, tb = reports[0]
        others = sorted(r for _, r, _ in reports[1:])
        tail = f"\n(ranks {others} failed after it)" if others else ""
        return f"worker rank {rank} failed:\n{tb.rstrip()}{tail}"
    rank = machine_rank * per_machine + error.error_index
    if isinstance(error, ProcessExitedException) and error.signal_name:
        return f"worker rank {rank} (pid {error.pid}) was killed by signal {error.signal_name}"
    if isinstance(error, ProcessExitedException):
        return f"worker rank {rank} (pid {error.pid}) exited with code {error.exit_code}"
    return f"worker rank {rank} failed:\n{error}"
