"""A tiny model and a resumable data loader for the engine tests (no tests of its own).

`EngineToyModel` is registered in META_ARCH_REGISTRY the way a user's model is. `ToyTrainer`
replaces the data loader with `ToyLoader` and, after training, writes each rank's weights to
OUTPUT_DIR/weights_rank<r>.pt. Subprocess tests run `train_net.cli(argv, ToyTrainer)`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mask2former.config import get_cfg
from mask2former.engine.hooks import HookBase
from mask2former.engine.trainer import Trainer
from mask2former.modeling.registry import META_ARCH_REGISTRY
from mask2former.utils import dist as dist_utils

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
TOOLS = REPO / "tools"

# Seconds each forward sleeps in a subprocess (the kill test needs steps that take a while).
SLEEP_ENV = "ENGINE_TOY_STEP_SLEEP"


@META_ARCH_REGISTRY.register()
class EngineToyModel(nn.Module):
    """Two convs predicting a target image; uses dropout and torch.rand, so exact resume
    needs the RNG states. `nan_at_call` makes the given forward call return a NaN loss."""

    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(8, 1, 3, padding=1)
        )
        self.nan_at_call: int | None = None
        self.nan_term = "loss_reg"
        self.calls = 0
        self.sleep = float(os.environ.get(SLEEP_ENV, "0"))

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        device = self.net[0].weight.device
        images = torch.stack([x["image"] for x in batched_inputs]).to(device)  # [B, 3, H, W]
        targets = torch.stack([x["target"] for x in batched_inputs]).to(device)  # [B, 1, H, W]
        pred = self.net(images + 0.01 * torch.rand_like(images))
        losses = {
            "loss_fit": ((pred - targets) ** 2).mean(),
            "loss_reg": 1e-3 * sum((p**2).sum() for p in self.parameters()),
        }
        if self.calls == self.nan_at_call:
            losses[self.nan_term] = losses[self.nan_term] * float("nan")
        return losses


class ToyLoader:
    """Infinite, deterministic, resumable: batch i of rank r depends only on (SEED, r, i)."""

    def __init__(self, cfg):
        self.seed = max(cfg.SEED, 0)
        self.batch_size = cfg.SOLVER.IMS_PER_BATCH // dist_utils.get_world_size()
        self.rank = dist_utils.get_rank()
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.rank * 1009 + self.position)
            batch = []
            for _ in range(self.batch_size):
                image = torch.rand(3, 12, 12, generator=g)
                batch.append({"image": image, "target": image.mean(0, keepdim=True) ** 2})
            self.position += 1
            yield batch


class DumpWeights(HookBase):
    def after_train(self) -> None:
        state = {k: v.detach().cpu() for k, v in self.trainer.checkpointer.model.state_dict().items()}
        torch.save(
            state, os.path.join(self.trainer.cfg.OUTPUT_DIR, f"weights_rank{dist_utils.get_rank()}.pt")
        )


class ToyTrainer(Trainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return ToyLoader(cfg)

    def build_hooks(self):
        return [*super().build_hooks(), DumpWeights()]


def toy_cfg(output_dir, **overrides):
    """A frozen config for EngineToyModel on CPU; overrides as {"SOLVER.MAX_ITER": 5}."""
    cfg = get_cfg()
    base = {
        "MODEL.META_ARCHITECTURE": "EngineToyModel",
        "MODEL.DEVICE": "cpu",
        "OUTPUT_DIR": str(output_dir),
        "SEED": 7,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 10,
        "SOLVER.CHECKPOINT_PERIOD": 3,
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.STEPS": (6,),
    }
    base.update(overrides)
    cfg.merge_from_list([x for kv in base.items() for x in kv])
    cfg.freeze()
    return cfg


def write_cfg_yaml(path, **overrides) -> str:
    cfg = toy_cfg(overrides.pop("OUTPUT_DIR"), **overrides)
    Path(path).write_text(cfg.dump())
    return str(path)


def train_net_command(*argv: str) -> list[str]:
    """A python command running tools/train_net.py's cli with ToyTrainer."""
    code = (
        f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TOOLS)!r}]; "
        "import test_engine_toy, train_net; train_net.cli(sys.argv[1:], test_engine_toy.ToyTrainer)"
    )
    return [sys.executable, "-c", code, *argv]


def load_weights_file(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
