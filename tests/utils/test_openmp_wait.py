"""`import mask2former` before PyTorch bounds how long idle OpenMP threads spin, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mask2former.utils.env import OPENMP_WAIT_VARIABLES

REPORT = "import os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def _run(code: str, **env_overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
    env.update(env_overrides)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_import_before_torch_bounds_spinning():
    assert _run(f"import mask2former, torch; {REPORT}") == "None 2000"


@pytest.mark.parametrize(("name", "value"), [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "50000")])
def test_user_choice_is_kept(name: str, value: str):
    expected = "ACTIVE None" if name == "OMP_WAIT_POLICY" else "None 50000"
    assert _run(f"import mask2former; {REPORT}", **{name: value}) == expected


def test_torch_loaded_first_is_left_alone():
    # OpenMP has read its settings when PyTorch loaded: changing them now would only make the
    # processes this one starts behave differently from it.
    assert _run(f"import torch, mask2former; {REPORT}") == "None None"


def test_train_net_imports_the_package_before_torch():
    # the wait policy of the process that trains (tools/train_net.py trains in-process)
    script = Path(__file__).resolve().parents[2] / "tools" / "train_net.py"
    code = (
        f"import runpy, sys; sys.argv = ['train_net.py', '--help']\n"
        f"try:\n    runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"{REPORT}"
    )
    assert _run(code).splitlines()[-1] == "None 2000"
