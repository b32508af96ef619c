# The two commands of the README, both from a fresh clone:
#   make demo  set up .venv when needed, generate the bundled shapes dataset, train Mask2Former on it
#              on the CPU, evaluate it (PQ, AP, mIoU) and draw val predictions (tools/main_job.py)
#   make test  set up .venv when needed, lint, type-check (mypy), compile-check the CUDA kernels (when nvcc exists) and
#              run the test suite (which includes the GPU check's dry run, tests/test_gpu_check.py)
# On a machine with a CUDA GPU (its own python with torch; no venv, no network needed):
#   make gpu-check      build the CUDA kernels in place, check them and the model on the GPU, time the
#                       targets (tools/gpu_check.py; GPU_CHECK_ARGS="--out DIR --fixtures DIR")
#   make gpu-check-dry  the same code paths on the CPU with tiny shapes, in the venv

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask2former-installed

GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?= --out output/gpu_check

.PHONY: demo test lint typecheck setup gpu-check gpu-check-dry

demo: $(STAMP)
	$(PY) tools/main_job.py

test: lint typecheck
	PYTHON=$(abspath $(PY)) bash .ci/compile_cuda.sh
	$(PY) -m pytest -q tests

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry: $(STAMP)
	$(PY) tools/gpu_check.py --dry-run --out output/gpu_check_dry

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over mask2former/ ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(VENV)/bin/mypy

setup: $(STAMP)

# setuptools 77 or later reads the SPDX license fields. torch first: setup.py imports it to build the deformable-attention op (no build isolation).
# panopticapi-lite (the PQ tests' oracle; pyproject's test-oracle extra) with --no-deps: its numpy<2
# pin is not needed by its code.
# Rebuilt when the build inputs change.
$(STAMP): pyproject.toml setup.py $(wildcard mask2former/layers/csrc/*.* mask2former/layers/csrc/*/*)
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --no-deps panopticapi-lite==0.2.0
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev,export]"
	touch $(STAMP)
