# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the locked dependencies on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench-snapshot clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/replicator demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check replicator tests bench migrations
	$(BIN)/ruff format --check replicator tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format replicator tests bench migrations
	$(BIN)/ruff check --fix replicator tests bench migrations

bench-snapshot: $(STAMP)
	$(BIN)/python bench/snapshot.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
