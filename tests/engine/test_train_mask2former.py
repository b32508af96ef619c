"""The real Mask2Former trained on CPU through the Trainer: a tiny config on a few synthetic
shapes images, until the total loss has at least halved; it writes a final checkpoint that loads
back into a fresh model and that `tools/train_net.py --eval-only` scores well above the untrained
model (PQ, AP and mIoU at levels measured with margin)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mask2former.checkpoint import load_weights, save_weights
from mask2former.config import get_cfg
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets
from mask2former.engine import Trainer
from mask2former.engine.defaults import seed_all_rng
from mask2former.modeling import build_model
from mask2former.utils.testing import TINY_CONFIG, TOOLS


@pytest.mark.slow
def test_tiny_mask2former_loss_halves_and_checkpoint_loads(tmp_path):
    root = tmp_path / "shapes"
    scenes = SceneConfig(height=64, width=64, min_things=1, max_things=2)
    generate_split(str(root), "train", 6, seed=0, cfg=scenes)
    generate_split(str(root), "val", 8, seed=1, cfg=scenes)
    register_bundled_datasets(str(root), prefix="halving_shapes")
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
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
    initial = tmp_path / "initial.pth"
    save_weights(trainer.checkpointer.model, str(initial))
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
    spec = importlib.util.spec_from_file_location("train_net", TOOLS / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)

    def evaluate(weights: str) -> dict:
        args = train_net.default_argument_parser().parse_args(
            ["--config-file", str(TINY_CONFIG), "--eval-only", "MODEL.WEIGHTS", weights, "DATASETS.TEST",
             "('halving_shapes_val_panoptic',)", "OUTPUT_DIR", str(tmp_path / "eval")]
        )  # fmt: skip
        return train_net.main(args)

    results = evaluate(str(final))
    untrained = evaluate(str(initial))
    assert set(results) >= {"panoptic_seg", "segm", "sem_seg"}
    # Measured (CPU, seed 0, 8 val images), trained: PQ 19.6, AP 14.4, mIoU 24.6 (2 threads); 22.5, 23.8,
    # 20.9 (1 thread); with PyTorch's attention or GroupNorm backward instead of the compiled ones PQ 19.7
    # and 19.5, AP 14.0 and 14.8, mIoU 25.0 and 30.6. Untrained: PQ 0, AP 0, mIoU 3.0. With 2 val images
    # (before) the levels jumped by a whole instance between such float-rounding variants (AP 22.5 / 45).
    assert results["panoptic_seg"]["PQ"] >= 10, results["panoptic_seg"]
    assert results["segm"]["AP"] >= 7, results["segm"]
    assert results["sem_seg"]["mIoU"] >= 12, results["sem_seg"]
    assert untrained["panoptic_seg"]["PQ"] < 2 and untrained["sem_seg"]["mIoU"] < 8, untrained
