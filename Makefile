# `make demo`: set up .venv when it is missing, then generate the bundled shapes dataset, train
# Mask2Former on it on the CPU, evaluate it (PQ, AP, mIoU) and draw val predictions
# (tools/main_job.py; 5-10 minutes on 2 CPU cores, plus the installation). `make test`: the unit tests.

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask2former-installed

.PHONY: demo test setup

demo: $(STAMP)
	$(PY) tools/main_job.py

test: $(STAMP)
	$(PY) -m pytest -q tests

setup: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1 "setuptools>=69" wheel
	$(PY) -m pip install --no-build-isolation -e ".[dev]"
	touch $(STAMP)
