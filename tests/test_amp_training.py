"""bfloat16 autocast training of the real Mask2Former on CPU follows float32 training.

What it proves, at CI cost (a tiny config, 64x64 synthetic images, 60 steps per precision): from
the same initial weights and the same batches, (1) the first step's losses, computed by the
whole model under bf16 autocast (backbone, deformable attention, decoder; the criterion in
fp32), agree with fp32's to a few per cent, and (2) over a short schedule the bf16 run lowers the
loss as far as the fp32 run does. What it does not prove: equal final accuracy after a full
schedule; that is measured with tools/main_job.py (README.md, Benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mask2former.config import get_cfg
from mask2former.engine.defaults import seed_all_rng
from mask2former.engine.hooks import HookBase
from mask2former.engine.trainer import Trainer
from mask2former.synthetic import SceneConfig, generate_split, register_bundled_datasets

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes" / "maskformer2_R18_tiny_test.yaml"
STEPS = 60


class _LossRecorder(HookBase):
    def __init__(self):
        self.losses: list[float] = []

    def after_step(self) -> None:
        self.losses.append(self.trainer.storage.latest()["total_loss"][0])


def _train(tmp_path: Path, dataset: str, precision: str) -> list[float]:
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    amp = ["SOLVER.AMP.ENABLED", precision != "float32"]
    if precision != "float32":
        amp += ["SOLVER.AMP.PRECISION", precision]
    cfg.merge_from_list(
        [
            *amp,
            "DATASETS.TRAIN", (dataset,),
            "DATASETS.TEST", (),
            "INPUT.MIN_SIZE_TRAIN", (64,),
            "INPUT.RANDOM_FLIP", "none",
            "SOLVER.MAX_ITER", STEPS,
            "SOLVER.BASE_LR", 2e-3,
            "SOLVER.WARMUP_ITERS", 5,
            "SEED", 0,
            "OUTPUT_DIR", str(tmp_path / precision),
        ]
    )  # fmt: skip
    seed_all_rng(0)
    recorder = _LossRecorder()

    class RecordingTrainer(Trainer):
        def build_hooks(self):
            return [recorder]

    trainer = RecordingTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(recorder.losses) == STEPS
    return recorder.losses


@pytest.mark.slow
def test_bfloat16_training_follows_float32(tmp_path):
    root = tmp_path / "shapes"
    scenes = SceneConfig(height=64, width=64, min_things=1, max_things=2)
    generate_split(str(root), "train", 6, seed=0, cfg=scenes)
    register_bundled_datasets(str(root), prefix="amp_shapes")
    fp32 = _train(tmp_path, "amp_shapes_train_panoptic", "float32")
    bf16 = _train(tmp_path, "amp_shapes_train_panoptic", "bfloat16")

    assert bf16[0] == pytest.approx(fp32[0], rel=0.03), "same weights and batch: bf16 forward differs"
    tail = 10
    fp32_end, bf16_end = sum(fp32[-tail:]) / tail, sum(bf16[-tail:]) / tail
    assert fp32_end <= 0.6 * fp32[0], f"fp32 loss went from {fp32[0]:.3f} to {fp32_end:.3f} only"
    assert bf16_end <= 1.15 * fp32_end, f"bf16 loss {bf16_end:.3f} after {STEPS} steps, fp32 {fp32_end:.3f}"
