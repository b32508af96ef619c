"""Trainer in one process: exact resume, non-finite losses, metrics writers, AMP."""

import json
import logging
import os

import pytest
import torch

from mask2former.checkpoint import find_nonfinite
from mask2former.engine.defaults import seed_all_rng
from mask2former.engine.hooks import HookBase
from mask2former.utils.testing import ToyTrainer, toy_cfg


class _Stop(Exception):
    pass


class _StopAt(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise _Stop


def _run(cfg, resume=False, extra_hooks=(), setup=None):
    seed_all_rng(cfg.SEED)
    trainer = ToyTrainer(cfg)
    trainer.register_hooks(list(extra_hooks))
    if setup is not None:
        setup(trainer)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.checkpointer.model.state_dict().items()}


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mask2former")
    overrides = {"SOLVER.MAX_ITER": 10, "SOLVER.CHECKPOINT_PERIOD": 3}
    reference = _weights(_run(toy_cfg(tmp_path / "ref", **overrides)))

    cfg = toy_cfg(tmp_path / "cut", **overrides)
    with pytest.raises(_Stop):
        _run(cfg, extra_hooks=[_StopAt(6)])  # dies after checkpoint model_0000005 (iteration 5)
    assert (tmp_path / "cut" / "last_checkpoint").read_text() == "model_0000005.pth"
    resumed = _run(cfg, resume=True)
    assert resumed.start_iter == 6
    for k, v in reference.items():
        assert torch.equal(v, resumed.checkpointer.model.state_dict()[k]), k
    init = _weights(ToyTrainer(cfg))
    assert not all(torch.equal(init[k], v) for k, v in reference.items())

    # metrics.json: one line per logging period (iterations 9 at the end), TensorBoard events
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.json").read_text().splitlines()]
    assert lines[-1]["iteration"] == 9
    assert {"loss_fit", "loss_reg", "total_loss", "lr", "time", "data_time"} <= set(lines[-1])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "ref"))
    console = [r.getMessage() for r in caplog.records if r.name == "mask2former.utils.events"]
    assert any(
        all(s in m for s in ("eta:", "iter: 9/10", "loss_fit:", "total_loss:", "lr:", "time:"))
        for m in console
    )


def test_nonfinite_loss_stops_with_the_term_and_iteration(tmp_path):
    cfg = toy_cfg(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 2})

    def inject(trainer):
        trainer.checkpointer.model.nan_at_call = 5  # iteration 4

    with pytest.raises(FloatingPointError, match=r"iteration 4: loss_reg=nan"):
        _run(cfg, setup=inject)
    saved = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert saved == ["model_0000001.pth", "model_0000003.pth"]
    for name in saved:
        state = torch.load(tmp_path / name, weights_only=True)["model"]
        assert find_nonfinite(state) == []


def test_skip_mode_drops_the_nonfinite_update(tmp_path):
    cfg = toy_cfg(tmp_path, **{"SOLVER.SKIP_NONFINITE_STEPS": True, "SOLVER.MAX_ITER": 6})
    snapshots = {}

    class Snapshot(HookBase):
        def before_step(self):
            snapshots[("before", self.trainer.iter)] = _weights(self.trainer)

        def after_step(self):
            snapshots[("after", self.trainer.iter)] = _weights(self.trainer)

    def inject(trainer):
        trainer.checkpointer.model.nan_at_call = 3  # iteration 2

    trainer = _run(cfg, extra_hooks=[Snapshot()], setup=inject)
    assert trainer.iter == 6
    before, after = snapshots[("before", 2)], snapshots[("after", 2)]
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = snapshots[("before", 3)], snapshots[("after", 3)]
    assert not all(torch.equal(before[k], after[k]) for k in before)
    assert find_nonfinite(_weights(trainer)) == []
    assert trainer.storage.history("skipped_steps").values() == [(1.0, 2)]


def _train_and_measure(cfg) -> tuple[list[float], torch.Tensor, ToyTrainer]:
    """(total loss per iteration, the whole weight update flattened, trainer) of a run."""
    seed_all_rng(cfg.SEED)
    trainer = ToyTrainer(cfg)
    init = _weights(trainer)
    trainer.train()
    final = _weights(trainer)
    assert find_nonfinite(final) == []
    update = torch.cat([(final[k] - init[k]).flatten() for k in init if init[k].is_floating_point()])
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return losses, update, trainer


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_amp_steps_follow_the_float32_steps(tmp_path, precision):
    """Three AMP steps against three float32 steps from the same start and data: per-step losses
    agree to 0.2% (measured on the CPU: bfloat16 5e-4; float16 runs as bfloat16 there) and the weight update points
    the same way (cosine 0.999999 measured) with a length within 1% (measured 0.14%, 0.02%)."""
    losses32, update32, _ = _train_and_measure(toy_cfg(tmp_path / "fp32", **{"SOLVER.MAX_ITER": 3}))
    amp = {"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": precision, "SOLVER.MAX_ITER": 3}
    losses, update, trainer = _train_and_measure(toy_cfg(tmp_path / precision, **amp))
    # on the CPU float16 runs as bfloat16 (the CPU only emulates float16), which needs no scaler
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    assert len(losses) == len(losses32) == 3
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses32), rtol=2e-3, atol=0)
    assert torch.nn.functional.cosine_similarity(update, update32, dim=0) > 0.999
    assert (update - update32).norm() <= 0.01 * update32.norm()


def test_bad_amp_precision_is_named(tmp_path):
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION"):
        ToyTrainer(toy_cfg(tmp_path, **{"SOLVER.AMP.PRECISION": "fp8"}))


def test_default_train_loader_resumes_its_data_order(tmp_path):
    from mask2former.data import DatasetCatalog
    from mask2former.engine.trainer import ResumableTrainLoader

    name = "engine_test_resumable_loader"
    DatasetCatalog.register(name, lambda: [{"image_id": i, "height": 8, "width": 8} for i in range(7)])
    try:
        cfg = toy_cfg(
            tmp_path,
            **{
                "DATASETS.TRAIN": (name,),
                "DATALOADER.NUM_WORKERS": 0,
                "DATALOADER.ASPECT_RATIO_GROUPING": False,
                "DATALOADER.FILTER_EMPTY_ANNOTATIONS": False,
                "SOLVER.IMS_PER_BATCH": 3,
            },
        )

        def ids(loader, n):
            it = iter(loader)
            return [[d["image_id"] for d in next(it)] for _ in range(n)]

        first = ResumableTrainLoader(cfg, mapper=dict)
        torch_rng = torch.get_rng_state()
        stream = ids(first, 6)
        # starting the DataLoader must not move the training's torch RNG (exact resume needs it)
        assert torch.equal(torch.get_rng_state(), torch_rng)
        assert first.state_dict() == {"seed": 7, "position": 6}
        resumed = ResumableTrainLoader(cfg, mapper=dict)
        resumed.load_state_dict({"seed": 7, "position": 4})
        assert ids(resumed, 2) == stream[4:]
    finally:
        DatasetCatalog.remove(name)


class _EvalTrainer(ToyTrainer):
    calls = 0

    @classmethod
    def test(cls, cfg, model):
        cls.calls += 1
        torch.rand(100)  # evaluation that draws random numbers must not change training
        return {"toy_val": {"score": float(cls.calls)}}


def test_periodic_evaluation_is_recorded_and_leaves_training_unchanged(tmp_path):
    plain = _weights(_run(toy_cfg(tmp_path / "plain", **{"SOLVER.MAX_ITER": 6})))
    cfg = toy_cfg(tmp_path / "eval", **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 2})
    seed_all_rng(cfg.SEED)
    trainer = _EvalTrainer(cfg)
    trainer.train()
    assert _EvalTrainer.calls == 3  # after iterations 1 and 3, and at the end
    for k, v in plain.items():
        assert torch.equal(v, _weights(trainer)[k]), k
    lines = [json.loads(x) for x in (tmp_path / "eval" / "metrics.json").read_text().splitlines()]
    assert lines[-1]["toy_val/score"] == 3.0


def test_max_iter_below_the_checkpoint_is_an_error(tmp_path):
    _run(toy_cfg(tmp_path, **{"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 3}))
    trainer = ToyTrainer(toy_cfg(tmp_path, **{"SOLVER.MAX_ITER": 4}))
    with pytest.raises(ValueError, match=r"model_final.pth is at iteration 6, beyond SOLVER.MAX_ITER 4"):
        trainer.resume_or_load(resume=True)


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    _run(toy_cfg(tmp_path, **{"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 3}))
    final = tmp_path / "model_final.pth"
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0x01
    final.write_bytes(bytes(data))
    trainer = ToyTrainer(toy_cfg(tmp_path, **{"SOLVER.MAX_ITER": 6}))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3  # after model_0000002.pth
    assert "Skipping checkpoint" in caplog.text and "model_final.pth is corrupt" in caplog.text


def test_run_step_outside_train_is_refused(tmp_path):
    trainer = ToyTrainer(toy_cfg(tmp_path))
    with pytest.raises(RuntimeError, match="called by train"):
        trainer.run_step()


def test_test_time_augmentation_needs_a_maskformer(tmp_path):
    cfg = toy_cfg(tmp_path)
    with pytest.raises(TypeError, match="TEST.AUG.ENABLED needs a MaskFormer model.*EngineToyModel"):
        ToyTrainer.test_with_tta(cfg, ToyTrainer.build_model(cfg), "unused")
