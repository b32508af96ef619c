"""Launcher with real processes (gloo on CPU): workers that die without raising, signals to
the launcher, the launcher killed, signals during checkpoint saves. Every run is bounded by a
subprocess timeout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mask2former.utils.testing import REPO, train_net_command, write_cfg_yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_DYING_JOB = """
import ctypes, os, time
import torch.distributed as dist
from mask2former.engine.launch import launch


def worker():
    if dist.get_rank() == 1:
        time.sleep(0.5)
        {death}
    dist.barrier()
    time.sleep(600)


if __name__ == "__main__":
    launch(worker, 2, backend="gloo")
"""


@pytest.mark.parametrize(
    ("death", "expected"),
    [
        ("ctypes.string_at(0)", "worker rank 1 (pid {pid}) was killed by signal SIGSEGV"),
        ("os._exit(3)", "worker rank 1 (pid {pid}) exited with code 3"),
        ("os.kill(os.getpid(), 9)", "worker rank 1 (pid {pid}) was killed by signal SIGKILL"),
    ],
)
def test_worker_dying_without_raising_is_reported_with_rank_and_signal(tmp_path: Path, death, expected):
    script = tmp_path / "job.py"
    script.write_text(_DYING_JOB.format(death=death))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "AttributeError" not in output, output
    head = expected.split(" (pid")[0]
    line = next(x for x in output.splitlines() if head in x)
    pid = int(line.split("(pid ")[1].split(")")[0])
    assert expected.format(pid=pid) in line, output


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _kill_all(pids: list[int]) -> None:
    """SIGKILL what is still running, so a failing test leaves no training behind."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _start_long_training(tmp_path: Path, num_gpus: int, **overrides) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    cfg = write_cfg_yaml(
        tmp_path / "cfg.yaml",
        OUTPUT_DIR=out,
        **{"SOLVER.MAX_ITER": 1_000_000, "SOLVER.IMS_PER_BATCH": 4, **overrides},
    )
    proc = subprocess.Popen(
        train_net_command("--config-file", cfg, "--num-gpus", str(num_gpus), "MODEL.DEVICE", "cpu"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a job started in the background by a script (`train_net.py ... &`): SIGINT ignored,
        # which Python's default KeyboardInterrupt and torch's parent-death SIGINT rely on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        _wait_for(lambda: (out / "last_checkpoint").exists() or proc.poll() is not None, 240, "a checkpoint")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, proc.communicate()
    return proc, out


def _assert_stopped_with_checkpoint(out: Path, stderr: str) -> None:
    """The workers' message (they get SIGTERM from the launcher, SIGINT from the terminal)."""
    stopped = next(x for x in stderr.splitlines() if x.startswith("Training stopped:"))
    assert re.search(r"stopped by SIG(TERM|INT) after iteration \d+: checkpoint .* written", stopped), stderr
    iteration = int(stopped.split("after iteration ")[1].split(":")[0])
    name = (out / "last_checkpoint").read_text()
    assert name == f"model_{iteration:07d}.pth"
    for path in out.glob("*.pth"):  # every checkpoint readable, no temporary file left
        assert torch.load(path, map_location="cpu", weights_only=True)["iteration"] >= 0
    assert not [p for p in os.listdir(out) if ".tmp." in p]
    assert torch.load(out / name, map_location="cpu", weights_only=True)["iteration"] == iteration


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_stops_all_workers_with_a_checkpoint(tmp_path: Path, signum: int):
    proc, out = _start_long_training(tmp_path, num_gpus=2)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=180)
    finally:
        _kill_all([proc.pid, *workers])
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"launcher received {signal.Signals(signum).name}" in stderr
    _assert_stopped_with_checkpoint(out, stderr)
    # the workers are joined before the launcher exits; its resource tracker may take a moment
    _wait_for(lambda: not any(_alive(p) for p in workers), 30, "the launcher's children to end")


def test_workers_die_with_a_killed_launcher(tmp_path: Path):
    proc, out = _start_long_training(tmp_path, num_gpus=2)
    workers = [p for p in _children(proc.pid) if _alive(p)]
    proc.kill()
    try:
        _wait_for(lambda: not any(_alive(p) for p in workers), 120, "the workers to end")
    finally:
        _kill_all(workers)
    proc.communicate(timeout=60)  # the workers held the output pipes
    for path in out.glob("*.pth"):
        assert torch.load(path, map_location="cpu", weights_only=True)["iteration"] >= 0


def test_signals_during_checkpoint_saves_leave_readable_files(tmp_path: Path):
    """One process saving every iteration, hit by a burst of SIGINTs: the save in progress
    completes, a final checkpoint is written, the exit is 130, no RuntimeError."""
    proc, out = _start_long_training(tmp_path, num_gpus=1, **{"SOLVER.CHECKPOINT_PERIOD": 1})
    for _ in range(20):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        _kill_all([proc.pid])
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "RuntimeError" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "stopped by SIGINT" in stderr
    _assert_stopped_with_checkpoint(out, stderr)
