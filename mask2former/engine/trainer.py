"""The training loop, in the spirit of Detectron2's `DefaultTrainer`.

    trainer = Trainer(cfg)             # model, optimizer, scheduler, data, scaler, DDP, hooks
    trainer.resume_or_load(resume=args.resume)
    trainer.train()                    # iterations start_iter .. SOLVER.MAX_ITER - 1

Customise by subclassing and overriding the classmethods `build_model`, `build_optimizer`,
`build_lr_scheduler`, `build_train_loader`, `build_test_loader`, `build_evaluator`, or the
method `build_hooks`.

One step (`run_step`): next batch -> model(batch) under autocast when SOLVER.AMP.ENABLED ->
dict of `loss_*` scalars -> mean over workers (one all-reduce, also used for logging) -> a
non-finite term stops the run with FloatingPointError naming the term(s) and the iteration,
or, with SOLVER.SKIP_NONFINITE_STEPS, drops that update -> backward (GradScaler for float16)
-> unscale, clip gradients, optimizer step. The LRScheduler hook steps the scheduler.

SIGINT/SIGTERM during `train()` (see `stop.py`): the all-reduce also carries "a worker was asked
to stop"; every rank then saves a checkpoint after that iteration and raises TrainingStopped.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mask2former.checkpoint import Checkpointer, dataset_metadata, unwrap_model
from mask2former.utils import dist as dist_utils
from mask2former.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardWriter,
)
from mask2former.utils.precision import autocast_dtype

from . import hooks as hooks_module
from .hook_base import HookBase
from .stop import StopOnSignals, TrainingStopped

logger = logging.getLogger(__name__)

_AMP_DTYPES = ("float16", "bfloat16")


def amp_precision_name(cfg) -> str:
    """SOLVER.AMP.PRECISION, checked (also when AMP is off, so a typo does not wait for a run with it on)."""
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in _AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(_AMP_DTYPES)}, got {precision!r}")
    return precision


def amp_dtype(cfg) -> torch.dtype:
    """The autocast dtype SOLVER.AMP.PRECISION names on MODEL.DEVICE (float16 on a CPU runs
    in bfloat16, with one warning)."""
    precision = amp_precision_name(cfg)
    return autocast_dtype(precision, torch.device(cfg.MODEL.DEVICE).type, "SOLVER.AMP.PRECISION")


def create_ddp_model(model: nn.Module) -> nn.Module:
    """Wrap `model` in DistributedDataParallel when several workers run (a no-op otherwise)."""
    if dist_utils.get_world_size() == 1:
        return model
    param = next(model.parameters())
    device_ids = [param.device.index] if param.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


class ResumableTrainLoader:
    """`build_detection_train_loader` with `state_dict()` / `load_state_dict()`, so the
    checkpoint holds the data position: the shuffling seed (cfg.SEED, or a random seed shared
    by the ranks when SEED < 0) and the number of batches handed to the trainer. Iterating
    after `load_state_dict` yields exactly the batches an uninterrupted run sees from there.

    Use it in a `build_train_loader` override to pass your own mapper.
    """

    def __init__(self, cfg, mapper=None):
        self.cfg = cfg
        self.mapper = mapper
        self.seed = int(cfg.SEED) if cfg.SEED >= 0 else dist_utils.shared_random_seed()
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seed, self.position = int(state["seed"]), int(state["position"])

    def __iter__(self) -> Iterator[list[dict]]:
        from mask2former.data import build_detection_train_loader

        loader = build_detection_train_loader(self.cfg, self.mapper, start_iter=self.position, seed=self.seed)
        # Starting a DataLoader iterator draws its base seed from the global torch RNG; keep
        # that draw out of the training's RNG stream, which a resume restores.
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        for batch in batches:
            self.position += 1
            yield batch


class Trainer:
    """Builds everything from `cfg` and runs the training loop with hooks."""

    def __init__(self, cfg):
        self.cfg = cfg
        model = self.build_model(cfg)
        self.optimizer = self.build_optimizer(cfg, model)
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.data_loader = self.build_train_loader(cfg)
        self.model = create_ddp_model(model)
        self.device = torch.device(cfg.MODEL.DEVICE)

        self.amp_enabled = bool(cfg.SOLVER.AMP.ENABLED)
        amp_precision_name(cfg)  # checked even with AMP off
        self.amp_dtype = amp_dtype(cfg) if self.amp_enabled else torch.float32
        logger.info(
            "Training precision: %s",
            f"{self.amp_dtype} autocast (SOLVER.AMP)" if self.amp_enabled else "float32",
        )
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.skip_nonfinite = bool(cfg.SOLVER.SKIP_NONFINITE_STEPS)

        from .solver import GradientClipSettings, clip_gradients, clipped_step

        self._clip_gradients = clip_gradients
        self._clipped_step = clipped_step
        self._clip_settings = GradientClipSettings.from_cfg(cfg)
        self.checkpointer = Checkpointer(
            model,
            cfg.OUTPUT_DIR,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            data_loader=self.data_loader,
            metadata=lambda: dataset_metadata(cfg),
        )
        self.start_iter = 0
        self.iter = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.storage: EventStorage
        self._data_iter: Iterator | None = None
        self._hooks: list[HookBase] = []
        self._stop_signal = StopOnSignals()
        self._stop_everywhere = False
        self.register_hooks(self.build_hooks())

    # ---- set-up --------------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume` and a `last_checkpoint` in OUTPUT_DIR: restore the whole training
        state and continue after its iteration. Otherwise load MODEL.WEIGHTS (when set) into
        the model and start at iteration 0."""
        if resume and self.checkpointer.has_checkpoint():
            path, iteration = self.checkpointer.load_newest_intact()
            if iteration + 1 > self.max_iter:
                raise ValueError(
                    f"{path} is at iteration {iteration + 1}, beyond SOLVER.MAX_ITER {self.max_iter}: "
                    "resuming would train nothing. Raise SOLVER.MAX_ITER, or train without --resume / "
                    "in another OUTPUT_DIR"
                )
            self.start_iter = iteration + 1
            return
        if resume:
            logger.info("No checkpoint in %s to resume from: starting from iteration 0", self.cfg.OUTPUT_DIR)
        if self.cfg.MODEL.WEIGHTS:
            from mask2former.checkpoint import load_weights

            load_weights(unwrap_model(self.model), self.cfg.MODEL.WEIGHTS, allow_partial=True)  # fine-tuning
        self.start_iter = 0

    def build_hooks(self) -> list[HookBase]:
        cfg = self.cfg
        ret: list[HookBase] = [
            hooks_module.IterationTimer(),
            hooks_module.LRScheduler(),
            hooks_module.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, self.max_iter),
            hooks_module.EvalHook(cfg.TEST.EVAL_PERIOD, lambda: self.test(self.cfg, self.model)),
        ]
        if dist_utils.is_main_process():
            ret.append(hooks_module.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def build_writers(self) -> list[EventWriter]:
        """Console lines, `OUTPUT_DIR/metrics.json` and TensorBoard events in OUTPUT_DIR."""
        out = self.cfg.OUTPUT_DIR
        os.makedirs(out, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(out, "metrics.json")),
            TensorboardWriter(out),
        ]

    def register_hooks(self, hooks: list[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = self
            self._hooks.append(h)

    # ---- the loop ------------------------------------------------------------------------
    def train(self) -> None:
        logger.info("Starting training from iteration %d to %d", self.start_iter, self.max_iter)
        self.iter = self.start_iter
        self._data_iter = iter(self.data_loader)
        self.model.train()
        with EventStorage(self.start_iter) as self.storage, StopOnSignals() as self._stop_signal:
            try:
                for h in self._hooks:
                    h.before_train()
                for it in range(self.start_iter, self.max_iter):
                    self.iter = self.storage.iter = it
                    for h in self._hooks:
                        h.before_step()
                    self.run_step()
                    for h in self._hooks:
                        h.after_step()
                    if self._should_stop() and it + 1 < self.max_iter:
                        self._stop_with_checkpoint(it)
                self.iter = self.max_iter
            finally:
                for h in self._hooks:
                    h.after_train()

    def _should_stop(self) -> bool:
        """A stop signal reached some worker (shared by `_reduce_losses`; a lone worker also
        sees its own signal when a subclass's `run_step` skips `_reduce_losses`)."""
        alone = dist_utils.get_world_size() == 1
        return self._stop_everywhere or (alone and self._stop_signal.signum is not None)

    def _stop_with_checkpoint(self, it: int) -> None:
        """A worker got SIGINT/SIGTERM: every rank saves the state after `it` and stops."""
        path = self.checkpointer.save(f"model_{it:07d}", iteration=it)
        dist_utils.synchronize()  # no rank exits while rank 0 is still writing
        signum = self._stop_signal.signum or signal.SIGTERM
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} after iteration {it}: checkpoint {path} written; "
            "continue with --resume",
            signum,
        )

    def run_step(self) -> None:
        if self._data_iter is None:
            raise RuntimeError("run_step() is called by train(), which opens the data loader")
        start = time.perf_counter()
        data = next(self._data_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(data)
        names, mean_losses = self._reduce_losses(loss_dict)
        losses = sum(loss_dict[k] for k in names)

        self.optimizer.zero_grad(set_to_none=True)
        bad = [n for n, v in zip(names, mean_losses) if not math.isfinite(v)]
        if bad:
            self._on_nonfinite(names, mean_losses, bad, losses)
            return
        self.scaler.scale(losses).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            self._clip_gradients(
                self._clip_settings, [p for g in self.optimizer.param_groups for p in g["params"]]
            )
            self.scaler.step(self.optimizer)
        else:
            with self._clipped_step(self._clip_settings, self.optimizer):
                self.optimizer.step()
        self.scaler.update()

        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalar("total_loss", sum(mean_losses))
        for name, value in zip(names, mean_losses):
            self.storage.put_scalar(name, value)

    def _reduce_losses(self, loss_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[float]]:
        """Check the model's loss dict; return its names and each term's mean over workers."""
        if not isinstance(loss_dict, Mapping) or not loss_dict:
            raise TypeError(
                f"in training mode the model must return a non-empty dict of losses, got {type(loss_dict)}"
            )
        names = sorted(loss_dict)
        for k in names:
            v = loss_dict[k]
            if not k.startswith("loss_"):
                raise KeyError(
                    f"the model returned {k!r}: every entry of the training output must be a loss_* term"
                )
            if not isinstance(v, torch.Tensor) or v.dim() != 0:
                raise TypeError(f"loss {k!r} must be a scalar tensor, got {getattr(v, 'shape', type(v))}")
        # One all-reduce carries the losses and whether any worker was asked to stop.
        stop = torch.tensor(float(self._stop_signal.signum is not None))
        stacked = torch.stack(
            [loss_dict[k].detach().float() for k in names] + [stop.to(loss_dict[names[0]].device)]
        )
        *means, stop_mean = dist_utils.all_reduce_mean(stacked).cpu().tolist()
        self._stop_everywhere = stop_mean > 0
        return names, means

    def _on_nonfinite(
        self, names: list[str], values: list[float], bad: list[str], losses: torch.Tensor
    ) -> None:
        where = (
            "" if dist_utils.get_world_size() == 1 else f" (mean over {dist_utils.get_world_size()} workers)"
        )
        terms = ", ".join(f"{n}={v}" for n, v in zip(names, values) if n in bad)
        message = f"Non-finite loss at iteration {self.iter}: {terms}{where}"
        if not self.skip_nonfinite:
            logger.error(message)
            raise FloatingPointError(message)
        logger.warning("%s; skipping this update (SOLVER.SKIP_NONFINITE_STEPS)", message)
        # The backward still runs so that DDP's gradient reduction completes on every worker;
        # its gradients are then dropped.
        if isinstance(self.model, DistributedDataParallel):
            self.scaler.scale(losses).backward()
            self.optimizer.zero_grad(set_to_none=True)
        self.storage.put_scalar("skipped_steps", 1.0, smoothing_hint=False)

    # ---- builders users override ---------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from mask2former.modeling import build_model

        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        from .solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls, cfg, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        from .solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """An infinite iterable of batches (lists of dicts). Give it `state_dict()` and
        `load_state_dict()` (as `ResumableTrainLoader` has) for resumes to restore data order."""
        return ResumableTrainLoader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from mask2former.data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        from mask2former.evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_tta(cls, cfg, model: nn.Module, dataset_name: str) -> dict:
        """Evaluate `model` with test-time augmentation (TEST.AUG.*) on one dataset; the tasks
        are named with a "_TTA" suffix ("sem_seg_TTA"), as in the original project."""
        from mask2former.evaluation import inference_on_dataset
        from mask2former.modeling import MaskFormer
        from mask2former.modeling.test_time_augmentation import build_tta_model

        inner = unwrap_model(model)
        if not isinstance(inner, MaskFormer):
            raise TypeError(
                f"TEST.AUG.ENABLED needs a MaskFormer model (or a subclass), got {type(inner).__name__}"
            )
        tta = build_tta_model(cfg, inner)
        logger.info(
            "Test-time augmentation on %s: shortest edges %s (long edge <= %d)%s",
            dataset_name,
            list(tta.min_sizes),
            tta.max_size,
            ", each also flipped" if tta.flip else "",
        )
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA", dataset_name)
        evaluator = cls.build_evaluator(cfg, dataset_name, folder)
        results = inference_on_dataset(tta, cls.build_test_loader(cfg, dataset_name), evaluator)
        return {f"{task}_TTA": metrics for task, metrics in results.items()}

    @classmethod
    def test(cls, cfg, model: nn.Module) -> OrderedDict:
        """Evaluate `model` on every dataset of DATASETS.TEST, and again with test-time
        augmentation when TEST.AUG.ENABLED (tasks "<task>_TTA"). Returns {dataset: metrics}
        (the metrics alone when there is one dataset; empty when there is none)."""
        results: OrderedDict = OrderedDict()
        if not cfg.DATASETS.TEST:
            return results
        from mask2former.evaluation import inference_on_dataset, print_csv_format

        was_training = model.training
        model.eval()
        try:
            for name in cfg.DATASETS.TEST:
                loader = cls.build_test_loader(cfg, name)
                evaluator = cls.build_evaluator(cfg, name)
                results[name] = inference_on_dataset(model, loader, evaluator)
                if cfg.TEST.AUG.ENABLED:
                    results[name].update(cls.test_with_tta(cfg, model, name))
                if dist_utils.is_main_process():
                    logger.info("Evaluation results for %s in csv format:", name)
                    print_csv_format(results[name])
        finally:
            model.train(was_training)
        if len(results) == 1:
            return OrderedDict(next(iter(results.values())))
        return results
