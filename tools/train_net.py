#!/usr/bin/env python
"""Train or evaluate a Mask2Former model, with Detectron2's command line.

    python tools/train_net.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file <cfg> --num-gpus 8 --resume          # continue a run
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file <cfg> --num-gpus 2 MODEL.DEVICE cpu  # two CPU workers (gloo)

A project with its own model, data or config keys has its own train_net.py, as Detectron2's
projects do: it imports its modules (which register their components) and calls
`cli(trainer_cls=..., config_adders=(add_<name>_config,))` (docs/EXTENDING.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable, Sequence

from mask2former.config import CfgNode, get_cfg
from mask2former.engine.defaults import default_argument_parser, default_setup
from mask2former.engine.launch import backend_for_device, launch
from mask2former.engine.trainer import Trainer

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


def main(
    args: argparse.Namespace, trainer_cls: type[Trainer] = Trainer, config_adders: Sequence[ConfigAdder] = ()
):
    """One worker's job: train (optionally resuming), or evaluate MODEL.WEIGHTS with --eval-only."""
    cfg = build_config(args, config_adders)
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
    launch(
        functools.partial(main, trainer_cls=trainer_cls, config_adders=tuple(config_adders)),
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=backend_for_device(device),
    )


if __name__ == "__main__":
    cli()
