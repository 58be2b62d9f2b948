# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs the project on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build pip takes from this machine's disk (x86_64) or a CPU build (aarch64).
TORCH_SPEC ?= $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)
RUN_DIR ?= runs/default

.PHONY: install run test lint bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

PRESET ?= default

run: install
	$(VENV)/bin/geovq run --run-dir $(RUN_DIR) --preset $(PRESET)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check geovq tests benchmarks examples
	$(VENV)/bin/ruff format --check geovq tests benchmarks examples
