"""tools/train_net.py end to end with the toy model: outputs (console, metrics.json,
TensorBoard, log, config dump) and a SIGKILLed run that resumes to the uninterrupted weights."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from mask2former.config import ConfigError
from mask2former.utils.testing import (
    KILL_AT_ITER_ENV,
    REPO,
    TOOLS,
    load_weights_file,
    train_net_command,
    write_cfg_yaml,
)

OVERRIDES = {"SOLVER.MAX_ITER": 12, "SOLVER.CHECKPOINT_PERIOD": 4}
# Killed right after iteration 9: checkpoints exist for iterations 3 and 7, so the resumed run
# must replay iterations 8 and 9 (data order, RNG states) exactly.
KILL_AT_ITER = 9


def _run(cfg_file, *extra, env=None):
    return subprocess.run(
        train_net_command("--config-file", cfg_file, *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = _run(write_cfg_yaml(tmp_path / "ref.yaml", OUTPUT_DIR=ref_dir, **OVERRIDES))
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = load_weights_file(ref_dir / "weights_rank0.pt")

    # what a user sees: console lines, metrics.json, TensorBoard events, log file, config dump
    line = next(x for x in ref.stdout.splitlines() if "iter: 11/12" in x)
    for part in ("eta:", "total_loss:", "loss_fit:", "loss_reg:", "time:", "data_time:", "lr:"):
        assert part in line, line
    metrics = [json.loads(x) for x in (ref_dir / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 11 and "total_loss" in metrics[-1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(ref_dir))
    assert "Starting training from iteration 0" in (ref_dir / "log.txt").read_text()
    assert "EngineToyModel" in (ref_dir / "config.yaml").read_text()

    cfg = write_cfg_yaml(tmp_path / "cut.yaml", OUTPUT_DIR=cut_dir, **OVERRIDES)
    env = {**os.environ, KILL_AT_ITER_ENV: str(KILL_AT_ITER)}
    killed = subprocess.run(train_net_command("--config-file", cfg), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    killed_at = (cut_dir / "last_checkpoint").read_text()
    assert killed_at == "model_0000007.pth"

    resumed = _run(cfg, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resumed from {cut_dir / killed_at}" in resumed.stdout
    final = load_weights_file(cut_dir / "weights_rank0.pt")
    for k, v in reference.items():
        assert torch.equal(v, final[k]), k


def test_command_line_overrides_are_checked_and_applied(tmp_path):
    sys.path.insert(0, str(TOOLS))
    import train_net

    cfg_file = write_cfg_yaml(tmp_path / "c.yaml", OUTPUT_DIR=tmp_path / "o")
    parser = train_net.default_argument_parser()
    args = parser.parse_args(["--config-file", cfg_file, "--num-gpus", "2", "SOLVER.MAX_ITER", "5"])
    assert (args.num_gpus, args.resume, args.dist_url) == (2, False, "auto")
    assert train_net.build_config(args).SOLVER.MAX_ITER == 5
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITERS"):
        train_net.build_config(parser.parse_args(["--config-file", cfg_file, "SOLVER.MAX_ITERS", "5"]))
