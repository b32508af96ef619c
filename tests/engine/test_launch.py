"""Launcher: two CPU workers (gloo) through tools/train_net.py, failure of one worker,
rank and world size from torchrun / SLURM environments.

The failing worker, `fail_on_rank_1`, is in mask2former.utils.testing (spawned workers import it).
"""

import importlib
import os
import subprocess
import sys

import pytest
import torch

# the package exports the function `launch`, which shadows the module's name as an attribute
launch_module = importlib.import_module("mask2former.engine.launch")


def test_two_cpu_workers_end_with_identical_weights(tmp_path):
    from mask2former.utils.testing import REPO, load_weights_file, train_net_command, write_cfg_yaml

    out = tmp_path / "out"
    cfg = write_cfg_yaml(
        tmp_path / "cfg.yaml", OUTPUT_DIR=out, **{"SOLVER.MAX_ITER": 4, "SOLVER.IMS_PER_BATCH": 4}
    )
    proc = subprocess.run(
        train_net_command("--config-file", cfg, "--num-gpus", "2", "MODEL.DEVICE", "cpu"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard; the machine may be busy
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_weights_file(out / "weights_rank0.pt"), load_weights_file(out / "weights_rank1.pt")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert len(final["per_rank"]) == 2 and final["iteration"] == 3
    assert "World size: 2" in (out / "log.txt").read_text()


_FAILING_JOB = """
from mask2former.engine.launch import launch
from mask2former.utils.testing import fail_on_rank_1

if __name__ == "__main__":
    launch(fail_on_rank_1, 2, args=({pid_dir!r},), backend="gloo")
"""


def test_one_failing_worker_ends_the_job(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = tmp_path / "job.py"
    script.write_text(_FAILING_JOB.format(pid_dir=str(pid_dir)))
    # the timeout fails the test if the job hangs instead of ending
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count("ValueError: injected failure on purpose") == 1, output
    assert "worker rank 1 failed" in output
    pids = [int(p) for p in os.listdir(pid_dir)]
    assert len(pids) == 2
    for pid in pids:  # no worker outlives the job
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_rank_and_world_size_come_from_torchrun(monkeypatch):
    for k, v in {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert launch_module._environment_worker() == (3, 8, 1, 2, "env://")


def test_rank_and_world_size_come_from_slurm(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4(x2)",
        "SLURM_NODELIST": "gpu[03-04],cpu1",
        "SLURM_JOB_ID": "1234",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launch_module._environment_worker() == (5, 8, 1, 4, "tcp://gpu03:16234")


def test_single_slurm_task_spawns_its_own_workers(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert launch_module._environment_worker() is None


def test_auto_url_needs_one_machine():
    with pytest.raises(ValueError, match="dist-url"):
        launch_module.launch(print, 2, num_machines=2, machine_rank=0, dist_url="auto")
