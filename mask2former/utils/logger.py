"""Logging set-up: console (rank 0 at INFO, other ranks at WARNING) and a log file per rank
in the output folder (`log.txt` for rank 0, `log.txt.rank<r>` for the others)."""

from __future__ import annotations

import functools
import logging
import os
import sys

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_RANK_FORMAT = "[%(asctime)s %(name)s %(levelname)s rank{rank}] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


@functools.lru_cache
def setup_logger(
    output: str | None = None, distributed_rank: int = 0, name: str = "mask2former"
) -> logging.Logger:
    """Configure and return the logger `name` (idempotent for the same arguments).

    Args:
        output: a folder (the log goes to `<output>/log.txt`) or a file name ending in
            .txt/.log; None for console only.
        distributed_rank: the worker's global rank; ranks other than 0 print only warnings
            and errors to the console, each tagged with its rank.
        name: the logger's name; "mask2former" configures every module of the package.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fmt = _FORMAT if distributed_rank == 0 else _RANK_FORMAT.format(rank=distributed_rank)
    formatter = logging.Formatter(fmt, datefmt=_DATEFMT)

    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(logging.INFO if distributed_rank == 0 else logging.WARNING)
    console.setFormatter(formatter)
    logger.addHandler(console)

    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        file_handler = logging.FileHandler(filename, mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
