"""tools/main_job.py (what `make demo` runs) end to end in a short version: dataset generation,
one training iteration, evaluation, and the drawing step switched off or on."""

import importlib.util
import os

import pytest

from mask2former.utils.testing import REPO


def _load_main_job():
    spec = importlib.util.spec_from_file_location(
        "main_job_under_test", os.path.join(REPO, "tools", "main_job.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("num_vis", [0, 1])
def test_main_job_trains_evaluates_and_draws(tmp_path, monkeypatch, num_vis):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "out"
    result = _load_main_job().main(
        [
            "--output-dir",
            str(out),
            "--num-vis",
            str(num_vis),
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
        ]
    )
    assert {"panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"} <= set(result["metrics"])
    assert (out / "model_final.pth").is_file()
    drawn = {task: sorted(os.listdir(folder)) for task, folder in result["vis"].items()}
    if num_vis == 0:
        assert drawn == {} and not (out / "vis").exists()
    else:
        assert set(drawn) == {"panoptic", "instance", "semantic"}
        assert all(len(files) == 1 for files in drawn.values()), drawn


def test_main_job_refuses_a_negative_drawing_count(tmp_path):
    with pytest.raises(SystemExit):
        _load_main_job().main(["--output-dir", str(tmp_path), "--num-vis", "-1"])
