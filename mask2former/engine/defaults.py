"""Command line and per-run set-up shared by the tools: `default_argument_parser()`,
and `default_setup(cfg, args)`."""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch

from mask2former.utils import dist as dist_utils
from mask2former.utils.logger import setup_logger

from .output_lock import lock_output_dir


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """Detectron2's command line: config file, resume/eval-only, distributed options and
    trailing `KEY VALUE` config overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  one machine:   python tools/train_net.py --config-file cfg.yaml --num-gpus 8\n"
            "  resume:        python tools/train_net.py --config-file cfg.yaml --num-gpus 8 --resume\n"
            "  evaluate:      python tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS model.pth\n"
            "  two machines:  (machine 0) --num-machines 2 --machine-rank 0 --dist-url tcp://host0:port\n"
            "                 (machine 1) --num-machines 2 --machine-rank 1 --dist-url tcp://host0:port\n"
            "  torchrun/SLURM: rank and world size come from the environment"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint named by OUTPUT_DIR/last_checkpoint (with --eval-only: evaluate it)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate MODEL.WEIGHTS (with --resume: OUTPUT_DIR's last checkpoint) on DATASETS.TEST; "
        "results, log and config go to OUTPUT_DIR/inference/",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="number of workers per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines-1)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialisation URL of the process group, e.g. tcp://host0:29500; 'auto' picks a free local "
        "port (one machine only)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.IMS_PER_BATCH 16",
    )
    return parser


def seed_all_rng(seed: int | None = None) -> int:
    """Seed python, numpy and torch (CPU and CUDA); a random seed when None. Returns it."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def default_setup(cfg, args: argparse.Namespace) -> None:
    """Per-worker set-up: create OUTPUT_DIR and, to train, take its lock (one training per
    folder, see `output_lock`), log to the console and OUTPUT_DIR/log.txt, log
    the environment, command line and config, dump the full config to OUTPUT_DIR/config.yaml
    (rank 0), seed the RNGs with SEED + rank (random when SEED < 0), set cudnn.benchmark.
    With --eval-only, the log and config go to OUTPUT_DIR/inference/ instead, so evaluating a
    training folder does not overwrite its config."""
    output_dir = cfg.OUTPUT_DIR
    if getattr(args, "eval_only", False):
        output_dir = os.path.join(output_dir, "inference")
    rank = dist_utils.get_rank()
    stale_lock = None
    if dist_utils.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        if not getattr(args, "eval_only", False):  # evaluation may read a running training's folder
            stale_lock = lock_output_dir(output_dir)
    dist_utils.synchronize()
    logger = setup_logger(output_dir, distributed_rank=rank, name="mask2former")
    if stale_lock:
        logger.warning(
            "Took over the lock of OUTPUT_DIR %s from a training that no longer runs: %s",
            output_dir,
            stale_lock,
        )

    logger.info("Rank of current process: %d. World size: %d", rank, dist_utils.get_world_size())
    logger.info(
        "Python %s, torch %s, CUDA available: %s",
        sys.version.split()[0],
        torch.__version__,
        torch.cuda.is_available(),
    )
    logger.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        with open(args.config_file) as f:
            logger.info("Contents of config file %s:\n%s", args.config_file, f.read())
    if dist_utils.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)

    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    logger.info("Seeded the RNGs of rank %d with %d", rank, seed)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
