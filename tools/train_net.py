#!/usr/bin/env python
"""Train or evaluate a Mask2Former model, with Detectron2's command line.

    python tools/train_net.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file <cfg> --num-gpus 8 --resume          # continue a run
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file <cfg> --eval-only --resume   # last checkpoint of OUTPUT_DIR
    python tools/train_net.py --config-file <cfg> --num-gpus 2 MODEL.DEVICE cpu  # two CPU workers (gloo)

A project with its own model, data or config keys has its own train_net.py, as Detectron2's
projects do: it imports its modules (which register their components) and calls
`cli(trainer_cls=..., config_adders=(add_<name>_config,))` (docs/EXTENDING.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence

import mask2former  # noqa: F401  # isort: skip  (first: sets the OpenMP wait policy before PyTorch loads)
import torch

from mask2former.checkpoint.atomic import atomic_write
from mask2former.config import CfgNode, get_cfg
from mask2former.engine.defaults import default_argument_parser, default_setup
from mask2former.engine.launch import TrainingStopped, backend_for_device, launch
from mask2former.engine.trainer import Trainer
from mask2former.utils import dist as dist_utils

logger = logging.getLogger("mask2former.train_net")


ConfigAdder = Callable[[CfgNode], None]


def build_config(args: argparse.Namespace, config_adders: Sequence[ConfigAdder] = ()) -> CfgNode:
    """Defaults, the keys of each config adder (`add_<name>_config(cfg)` of an extension), then
    the config file, then the command-line overrides; frozen."""
    cfg = get_cfg()
    for add_config in config_adders:
        add_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def eval_weights(cfg, model: torch.nn.Module, resume: bool) -> str:
    """The weights --eval-only evaluates: with --resume, the checkpoint OUTPUT_DIR/last_checkpoint
    names (as Detectron2), else MODEL.WEIGHTS."""
    from mask2former.checkpoint.checkpointer import Checkpointer

    if resume:
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
        if checkpointer.has_checkpoint():
            return checkpointer.get_checkpoint_file()
        if not cfg.MODEL.WEIGHTS:
            raise FileNotFoundError(
                f"--eval-only --resume: no last_checkpoint in {cfg.OUTPUT_DIR} and MODEL.WEIGHTS is empty"
            )
        logger.warning(
            "No last_checkpoint in %s: evaluating MODEL.WEIGHTS %s", cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS
        )
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "--eval-only needs weights: add `MODEL.WEIGHTS <file>` to the command line, or --resume to "
            "evaluate the last checkpoint of OUTPUT_DIR"
        )
    return cfg.MODEL.WEIGHTS


def write_eval_metrics(cfg, weights: str, results: dict) -> str:
    """Write OUTPUT_DIR/inference/metrics.json: {"weights", "results": {dataset: {task: {metric:
    value}}}} (NaN, for a class without ground truth, as null). Returns its path."""
    if len(cfg.DATASETS.TEST) == 1:
        results = {cfg.DATASETS.TEST[0]: results}
    path = os.path.join(cfg.OUTPUT_DIR, "inference", "metrics.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    document = {"weights": weights, "results": _nan_to_none(results)}
    atomic_write(path, lambda f: f.write(json.dumps(document, indent=2).encode()))
    logger.info("Evaluation results written to %s", path)
    return path


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def main(
    args: argparse.Namespace, trainer_cls: type[Trainer] = Trainer, config_adders: Sequence[ConfigAdder] = ()
):
    """One worker's job: train (optionally resuming), or evaluate with --eval-only (MODEL.WEIGHTS,
    or with --resume the last checkpoint of OUTPUT_DIR); evaluation outputs, its log and config
    go to OUTPUT_DIR/inference/."""
    cfg = build_config(args, config_adders)
    default_setup(cfg, args)
    if args.eval_only:
        from mask2former.checkpoint import load_weights

        model = trainer_cls.build_model(cfg)
        weights = eval_weights(cfg, model, args.resume)
        load_weights(model, weights)
        logger.info("Evaluating %s", weights)
        results = trainer_cls.test(cfg, model)
        if dist_utils.is_main_process():
            write_eval_metrics(cfg, weights, results)
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return None


def cli(
    argv: Sequence[str] | None = None,
    trainer_cls: type[Trainer] = Trainer,
    config_adders: Sequence[ConfigAdder] = (),
) -> None:
    """Parse the command line and run `main` in every worker. `config_adders` (module-level
    functions, so that spawned workers can import them) add an extension's keys."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    device = build_config(args, config_adders).MODEL.DEVICE
    try:
        launch(
            functools.partial(main, trainer_cls=trainer_cls, config_adders=tuple(config_adders)),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend=backend_for_device(device),
        )
    except TrainingStopped as e:  # SIGINT/SIGTERM: a checkpoint was written
        print(f"Training stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    cli()
