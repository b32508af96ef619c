"""One training per OUTPUT_DIR: a second training into the folder refuses, naming the holder;
after the holder is SIGKILLed a new training takes the lock over with a notice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mask2former.engine.output_lock import (
    LOCK_FILE,
    lock_output_dir,
    unlock_output_dir,
)
from mask2former.utils.testing import REPO, train_net_command, write_cfg_yaml

_TRY_LOCK = (
    "import sys\n"
    "from mask2former.engine.output_lock import lock_output_dir, OutputDirInUseError\n"
    "try:\n"
    "    print('stale:', lock_output_dir(sys.argv[1]))\n"
    "except OutputDirInUseError as e:\n"
    "    print('refused:', e)\n"
    "    sys.exit(3)\n"
    "if sys.argv[2] == 'die':\n"
    "    import os; os._exit(0)\n"
)


def _try_lock(folder: Path, then: str = "exit") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(folder), then], capture_output=True, text=True, timeout=60
    )


def test_lock_refuses_a_second_holder_and_is_taken_over_when_the_holder_dies(tmp_path: Path):
    lock_output_dir(str(tmp_path))
    try:
        other = _try_lock(tmp_path)
        assert other.returncode == 3, other.stdout + other.stderr
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in other.stdout
        assert str(tmp_path) in other.stdout
    finally:
        unlock_output_dir(str(tmp_path))
    released = _try_lock(tmp_path)  # a clean release (also at a normal exit) leaves nothing to report
    assert "stale: None" in released.stdout, released.stdout + released.stderr
    died = _try_lock(tmp_path, then="die")  # exits holding the lock, text left in the file
    assert "stale: None" in died.stdout
    taker = _try_lock(tmp_path)
    assert "stale: pid " in taker.stdout and "(lock file" not in taker.stdout, taker.stdout


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} never appeared: {proc.communicate()}")
        time.sleep(0.1)


def test_two_trainings_in_one_output_dir(tmp_path: Path):
    out = tmp_path / "out"
    long_cfg = write_cfg_yaml(tmp_path / "long.yaml", OUTPUT_DIR=out, **{"SOLVER.MAX_ITER": 1_000_000})
    first = subprocess.Popen(train_net_command("--config-file", long_cfg), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(out / "last_checkpoint", first)
        config_before = (out / "config.yaml").read_text()
        other_cfg = write_cfg_yaml(
            tmp_path / "other.yaml", OUTPUT_DIR=out, **{"SOLVER.MAX_ITER": 4, "SEED": 99}
        )
        second = subprocess.run(train_net_command("--config-file", other_cfg), cwd=REPO, capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert second.returncode != 0
        assert "OutputDirInUseError" in second.stderr, second.stderr[-3000:]
        assert f"in use by another training: pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert (out / "config.yaml").read_text() == config_before  # the running training's files untouched
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)

    short_cfg = write_cfg_yaml(tmp_path / "short.yaml", OUTPUT_DIR=out, **{"SOLVER.MAX_ITER": 8})
    # a fresh run (not --resume: the killed run's checkpoints may be past this MAX_ITER, which resuming refuses)
    third = subprocess.run(train_net_command("--config-file", short_cfg), cwd=REPO,
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"from a training that no longer runs: pid {first.pid} on host" in third.stdout + third.stderr
    assert (out / LOCK_FILE).read_text() == ""  # released cleanly at the end


_SETUP = (
    "import argparse, sys\n"
    "from mask2former.engine.defaults import default_setup\n"
    "from mask2former.utils.testing import toy_cfg\n"
    "default_setup(toy_cfg(sys.argv[1]), argparse.Namespace(eval_only=sys.argv[2] == 'eval', config_file=''))\n"
)


def test_eval_only_does_not_take_the_training_lock(tmp_path: Path):
    lock_output_dir(str(tmp_path))
    try:
        run = [sys.executable, "-c", _SETUP, str(tmp_path)]
        evaluation = subprocess.run([*run, "eval"], capture_output=True, text=True, timeout=120)
        assert evaluation.returncode == 0, evaluation.stderr[-3000:]
        training = subprocess.run([*run, "train"], capture_output=True, text=True, timeout=120)
        assert "OutputDirInUseError" in training.stderr and f"pid {os.getpid()}" in training.stderr
    finally:
        unlock_output_dir(str(tmp_path))
