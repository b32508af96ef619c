"""tools/main_job.py (what `make demo` runs) end to end in a short version, in its own process (the
builtin datasets are registered under $DETECTRON2_DATASETS at import): dataset generation, one
training iteration, evaluation, and the drawing step switched off or on."""

import json
import os
import subprocess
import sys

import pytest

from mask2former.utils.testing import REPO


def _run_main_job(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    return subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "main_job.py"),
            "--output-dir",
            str(tmp_path / "out"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("num_vis", [0, 1])
def test_main_job_trains_evaluates_and_draws(tmp_path, num_vis):
    run = _run_main_job(tmp_path, "--num-vis", str(num_vis), "SOLVER.MAX_ITER", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    assert (
        "panoptic_seg PQ" in run.stdout
        and "segm         AP" in run.stdout
        and "sem_seg      mIoU" in run.stdout
    )
    with open(out / "metrics.json") as f:
        evaluated = [row for row in map(json.loads, f) if "panoptic_seg/PQ" in row]
    assert evaluated and {"segm/AP", "sem_seg/mIoU"} <= set(evaluated[-1])
    if num_vis == 0:
        assert not (out / "vis").exists()
    else:
        drawn = {task: os.listdir(out / "vis" / task) for task in ("panoptic", "instance", "semantic")}
        assert all(len(files) == 1 for files in drawn.values()), drawn


def test_main_job_refuses_a_negative_drawing_count(tmp_path):
    run = _run_main_job(tmp_path, "--num-vis", "-1")
    assert run.returncode == 2 and "--num-vis must be 0 or more" in run.stderr
