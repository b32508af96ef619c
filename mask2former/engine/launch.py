"""Start one worker per GPU (or per CPU process with gloo) and run `main_func` in each.

Three ways in:
- `--num-gpus N [--num-machines M --machine-rank R --dist-url tcp://host:port]`: this
  process spawns N local workers (torch.multiprocessing, start method "spawn").
- under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
  environment) or `srun` with several tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
  SLURM_NODELIST): this process is one worker; rank and world size come from there.
NCCL is used for CUDA devices, gloo for CPU.

Failures: when a spawned worker raises or dies, the others are terminated, and `launch`
raises `WorkerFailedError` naming the rank that failed first with its traceback (or the
signal / exit code of a worker that died without raising: segfault, `os._exit`), once.

Stopping: SIGINT/SIGTERM to the launcher are passed on to the workers as SIGTERM; their
trainers write a checkpoint after the current iteration and stop, and `launch` raises
`TrainingStopped` (tools exit with 128 + the signal number). Workers die with the launcher:
Linux sends them SIGTERM when it dies, even by SIGKILL (PR_SET_PDEATHSIG; a watchdog thread
elsewhere).
Every collective runs with `timeout`, so a worker on another machine that waits for a
dead peer stops too, instead of hanging.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from mask2former.checkpoint import atomic_write
from mask2former.utils import dist as dist_utils

from .stop import HandledStopSignals, TrainingStopped

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

__all__ = ["DEFAULT_TIMEOUT", "TrainingStopped", "WorkerFailedError", "backend_for_device", "launch"]


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
    WorkerFailedError (the others are terminated by torch.multiprocessing). SIGINT/SIGTERM
    to this process are passed on to the workers as SIGTERM, and end in TrainingStopped."""
    world_size = num_machines * num_gpus_per_machine
    error_dir = tempfile.mkdtemp(prefix="mask2former_launch_")
    forwarder = _SignalForwarder()
    try:
        with forwarder:
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
                    os.getpid(),
                ),
                join=False,
                start_method="spawn",
            )
            forwarder.pids = [p.pid for p in context.processes]
            _wait_for_workers(context, forwarder, error_dir, machine_rank, num_gpus_per_machine)
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def _wait_for_workers(context, forwarder, error_dir: str, machine_rank: int, per_machine: int) -> None:
    try:
        # Poll, so a stop signal arriving meanwhile gives stopping workers time to finish
        # their checkpoint before torch.multiprocessing terminates the rest.
        while not context.join(timeout=1.0, grace_period=_STOP_GRACE_S if forwarder.signum else None):
            pass
        if forwarder.signum is not None:  # every worker ended cleanly after the signal
            name = signal.Signals(forwarder.signum).name
            raise TrainingStopped(f"stopped by {name}: the workers ended", forwarder.signum)
    except ProcessException as e:
        message, stopped = _describe_failure(e, error_dir, machine_rank, per_machine)
        if forwarder.signum is not None or stopped:
            signum = forwarder.signum or signal.SIGTERM
            raise TrainingStopped(message, signum) from None
        raise WorkerFailedError(message) from None


_STOP_GRACE_S = 120.0


class _SignalForwarder(HandledStopSignals):
    """While active: SIGINT/SIGTERM to the launcher are recorded and sent on to the workers
    as SIGTERM (whose trainers then write a checkpoint and stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        logger.warning(
            "launcher received %s: asking the %d workers to write a checkpoint and stop",
            signal.Signals(signum).name,
            len(self.pids),
        )
        self.signum = signum
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to send SIGTERM to this worker when the launcher dies (even by SIGKILL); the
    trainer then writes a checkpoint and stops. Elsewhere, a thread watches the parent's pid."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


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
    parent_pid: int,
) -> None:
    _die_with_parent(parent_pid)
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        _init_worker(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine, timeout)
        main_func(*args)
    except TrainingStopped as e:
        _write_report(error_dir, rank, _STOPPED, f"{e}\n")
        raise
    except BaseException:
        # Record when and how this rank failed, so the parent reports the first failure
        # (the others are usually peers losing their connection to it).
        _write_report(error_dir, rank, _FAILED, traceback.format_exc())
        raise
    dist.destroy_process_group()


_STOPPED, _FAILED = "stopped", "failed"


def _write_report(error_dir: str, rank: int, kind: str, text: str) -> None:
    """Written atomically, so the parent never reads half a report."""
    report = f"{time.time()}\n{kind}\n{text}".encode()
    atomic_write(os.path.join(error_dir, f"rank{rank}"), lambda f: f.write(report))


def _read_reports(error_dir: str) -> list[tuple[float, int, str, str]]:
    """(time, rank, kind, text) of every finished report, oldest first."""
    reports = []
    for name in os.listdir(error_dir):
        if name.startswith("."):  # a report still being written
            continue
        with open(os.path.join(error_dir, name)) as f:
            stamp, kind, text = f.read().split("\n", 2)
        reports.append((float(stamp), int(name.removeprefix("rank")), kind, text))
    return sorted(reports)


def _describe_failure(
    error: ProcessException, error_dir: str, machine_rank: int, per_machine: int
) -> tuple[str, bool]:
    """The message for the first failure, and whether every report is a clean stop."""
    reports = _read_reports(error_dir)
    rank = machine_rank * per_machine + error.error_index
    reported = {r for _, r, _, _ in reports}
    if isinstance(error, ProcessExitedException) and rank not in reported:
        # Died without raising (signal, os._exit): it is the first failure; peers that lost
        # their connection to it report after.
        how = (
            f"was killed by signal {error.signal_name}"
            if error.signal_name
            else f"exited with code {error.exit_code}"
        )
        tail = f"\n(ranks {sorted(reported)} failed after it)" if reported else ""
        return f"worker rank {rank} (pid {error.error_pid}) {how}{tail}", False
    if not reports:
        return f"worker rank {rank} failed:\n{error}", False
    _, first, kind, text = reports[0]
    if all(k == _STOPPED for _, _, k, _ in reports):
        return f"worker rank {first} {text.rstrip()}", True
    _, first, kind, text = next(r for r in reports if r[2] == _FAILED)
    others = sorted(r for _, r, _, _ in reports if r != first)
    tail = f"\n(ranks {others} failed after it)" if others else ""
    return f"worker rank {first} failed:\n{text.rstrip()}{tail}", False
