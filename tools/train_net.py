#!/usr/bin/env python
"""Train or evaluate a Mask2Former model, with Detectron2's command line.

    python tools/train_net.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file <cfg> --num-gpus 8 --resume          # continue a run
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file <cfg> --num-gpus 2 MODEL.DEVICE cpu  # two CPU workers (gloo)

A project with its own model or data subclasses `Trainer` and calls `cli(trainer_cls=...)`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence

from mask2former.config import get_cfg
from mask2former.engine.defaults import default_argument_parser, default_setup
from mask2former.engine.launch import TrainingStopped, backend_for_device, launch
from mask2former.engine.trainer import Trainer

logger = logging.getLogger("mask2former.train_net")


def build_config(args: argparse.Namespace):
    """Defaults, then the config file, then the command-line overrides; frozen."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def main(args: argparse.Namespace, trainer_cls: type[Trainer] = Trainer):
    """One worker's job: train (optionally resuming), or evaluate MODEL.WEIGHTS with --eval-only."""
    cfg = build_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs weights: add `MODEL.WEIGHTS <file>` to the command line")
        from mask2former.checkpoint import load_weights

        model = trainer_cls.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return None


def cli(argv: Sequence[str] | None = None, trainer_cls: type[Trainer] = Trainer) -> None:
    """Parse the command line and run `main` in every worker."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    device = build_config(args).MODEL.DEVICE
    try:
        launch(
            functools.partial(main, trainer_cls=trainer_cls),
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
