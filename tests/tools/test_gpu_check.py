"""tools/gpu_check.py: its dry run (the GPU check's code paths on the CPU, tiny shapes) passes and
reports every stage and figure; the report's verdict follows its checks."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_passes_and_reports_every_stage(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["ok"]
    stages = {s["name"]: s["status"] for s in report["stages"]}
    assert stages.pop("pytest (CUDA tests)") == "skipped"
    assert set(stages.values()) == {"ok"}, stages
    assert len(stages) == 13
    assert all(c["ok"] for c in report["checks"]) and len(report["checks"]) >= 20
    gpu_check = load_gpu_check()
    measured = {t["name"] for t in report["timings"]}
    assert measured == set(gpu_check.TARGETS) - {"training peak memory per image"}  # peak memory: GPU only
    assert "result: PASS" in (tmp_path / "gpu_check.txt").read_text()


def test_a_failed_check_or_broken_stage_fails_the_run(tmp_path):
    gpu_check = load_gpu_check()
    report = gpu_check.Report(gpu_check.DRY, dry_run=True, budget_s=60)
    report.stage("passing", lambda: report.check("one", True, ""))
    assert report.ok()
    report.stage("broken", lambda: 1 / 0)
    assert not report.ok() and report.stages[-1]["status"] == "error"
    assert "ZeroDivisionError" in report.stages[-1]["detail"]
    report = gpu_check.Report(gpu_check.DRY, dry_run=True, budget_s=60)
    report.stage("failing", lambda: report.check("two", False, "off by one"))
    assert not report.ok() and report.stages[-1]["status"] == "failed"
    report.write(tmp_path)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["ok"] is False
    assert "FAIL two: off by one" in (tmp_path / "gpu_check.txt").read_text()
