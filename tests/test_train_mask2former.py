"""The real Mask2Former trained on CPU through the Trainer: a tiny config on a few synthetic
shapes images, until the total loss has at least halved; it writes a final checkpoint that loads
back into a fresh model and that `tools/train_net.py --eval-only` scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mask2former.checkpoint import load_weights
from mask2former.config import get_cfg
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets
from mask2former.engine import Trainer
from mask2former.engine.defaults import seed_all_rng
from mask2former.modeling import build_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes" / "maskformer2_R18_tiny_test.yaml"


@pytest.mark.slow
def test_tiny_mask2former_loss_halves_and_checkpoint_loads(tmp_path):
    root = tmp_path / "shapes"
    scenes = SceneConfig(height=64, width=64, min_things=1, max_things=2)
    generate_split(str(root), "train", 6, seed=0, cfg=scenes)
    generate_split(str(root), "val", 2, seed=1, cfg=scenes)
    register_bundled_datasets(str(root), prefix="halving_shapes")
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", ("halving_shapes_train_panoptic",),
            "DATASETS.TEST", (),
            "INPUT.MIN_SIZE_TRAIN", (64,),
            "INPUT.RANDOM_FLIP", "none",
            "SOLVER.MAX_ITER", 140,
            "SOLVER.BASE_LR", 2e-3,
            "SOLVER.WARMUP_ITERS", 5,
            "SOLVER.CHECKPOINT_PERIOD", 1000,
            "OUTPUT_DIR", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    with open(tmp_path / "out" / "metrics.json") as f:
        losses = [row["total_loss"] for row in map(json.loads, f) if "total_loss" in row]
    assert len(losses) >= 2
    assert losses[-1] <= 0.5 * losses[0], f"total loss went from {losses[0]:.3f} to {losses[-1]:.3f}"

    final = tmp_path / "out" / "model_final.pth"
    assert final.is_file()
    fresh = build_model(cfg)
    report = load_weights(fresh, str(final))
    assert report.missing == [] and report.unexpected == []
    trained = trainer.checkpointer.model.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, trained[k]), k

    # --eval-only through the command-line tool scores the trained weights on the val split.
    spec = importlib.util.spec_from_file_location("train_net", CONFIG.parents[2] / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(CONFIG), "--eval-only", "MODEL.WEIGHTS", str(final), "DATASETS.TEST",
         "('halving_shapes_val_panoptic',)", "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    results = train_net.main(args)
    assert set(results) >= {"panoptic_seg", "segm", "sem_seg"}
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100 and results["sem_seg"]["mIoU"] > 0
