"""The README's custom-dataset path on a labelme-style COCO export, run as a user would, from a
working directory outside the clone: a script next to the data registers it and calls
tools/train_net.py's cli; training, then `--eval-only --resume`, which evaluates the last
checkpoint and reports Detectron2-style tables, plain floats, and OUTPUT_DIR/inference/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from mask2former.utils.testing import REPO, TINY_CONFIG, make_labelme_coco

SCRIPT = """
import sys
from pathlib import Path

import mask2former
from mask2former.data import register_coco_instances

sys.path.insert(0, str(Path(mask2former.__file__).resolve().parents[1] / "tools"))
from train_net import cli

DATA = Path(__file__).resolve().parent / "data"
register_coco_instances("my_train", {}, str(DATA / "train/annotations.json"), str(DATA / "train/JPEGImages"))
register_coco_instances("my_val", {}, str(DATA / "val/annotations.json"), str(DATA / "val/JPEGImages"))

if __name__ == "__main__":
    cli()
"""

INSTANCE_ONLY = [
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "False",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
]  # fmt: skip


def _run(script, cwd, *argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_register_train_and_eval_only_resume_from_another_directory(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_labelme_coco(project / "data" / "train", n_images=4, size=(64, 80), seed=1)
    make_labelme_coco(project / "data" / "val", n_images=3, size=(64, 80), seed=2)
    script = project / "train_mine.py"
    script.write_text(SCRIPT)
    elsewhere.mkdir()
    common = [
        "DATASETS.TRAIN",
        "('my_train',)",
        "DATASETS.TEST",
        "('my_val',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "2",
    ]
    common += ["INPUT.DATASET_MAPPER_NAME", "mask_former_instance", "OUTPUT_DIR", "out"]

    opts = [*common, *INSTANCE_ONLY, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"]
    train = _run(script, elsewhere, "--config-file", str(TINY_CONFIG), *opts)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    out = elsewhere / "out"
    training_config = (out / "config.yaml").read_text()
    (out / "last_checkpoint").write_text(
        "model_0000001.pth"
    )  # the checkpoint of iteration 1, not the final one

    ev = _run(script, elsewhere, "--config-file", str(out / "config.yaml"), "--eval-only", "--resume")
    log = ev.stdout + ev.stderr
    assert ev.returncode == 0, log[-5000:]
    assert "Evaluating out/model_0000001.pth" in log
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|", log)  # the summary table
    assert (
        "Per-category segm AP" in log
        and re.search(r"\|\s+bottle\s+\|", log)
        and re.search(r"\|\s+cup\s+\|", log)
    )
    assert "np.float" not in log

    metrics = json.loads((out / "inference" / "metrics.json").read_text())
    assert metrics["weights"].endswith("model_0000001.pth")
    segm = metrics["results"]["my_val"]["segm"]
    assert isinstance(segm["AP"], float) and {"AP-bottle", "AP-cup"} <= set(segm)
    assert (out / "inference" / "my_val" / "coco_instances_results.json").is_file()
    assert (out / "config.yaml").read_text() == training_config  # the training folder's config is kept
    assert "my_val" in (out / "inference" / "config.yaml").read_text()
    assert "Evaluating" in (out / "inference" / "log.txt").read_text()
