# `make demo` and `make test` work on a fresh clone: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all native lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so pip takes the local CPU build instead of a multi-GB CUDA one.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The fast backend's C++ loops, built for this machine ahead of first use (a no-op once built).
# Where they cannot be built (no compiler), the fast backend runs its Python loops: go on.
native: $(STAMP)
	-$(VENV)/bin/unrolled build --no-progress

demo: native
	$(VENV)/bin/unrolled demo

test: native
	$(PY) -m pytest -q -n 2

test-all: native
	$(PY) -m pytest -q -n 2 --runslow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

bench: $(STAMP)
	$(VENV)/bin/unrolled bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
