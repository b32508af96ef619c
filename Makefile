# Two commands for a fresh machine (see README): `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test lint

# Environment: torch first (the compiled op's setup.py imports it), then the package and its tools.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard mask2former/layers/csrc/*/*) $(wildcard mask2former/layers/csrc/*.*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev,export]"
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	PYTHON=$(abspath $(PY)) bash .ci/compile_cuda.sh
	$(PY) -m pytest -q
