# Every target sets up what it needs: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
APT_TEST_PACKAGES := chromium prometheus

.PHONY: run test lint check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is installed first and pinned: its CPU build (a local wheel on the build
# machines); an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# Debian packages the tests drive: chromium (the dashboard's browser test)
	@# and prometheus (promtool checks the alert rules). Installed where apt is
	@# ours to use; elsewhere install them by hand.
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& ! { command -v chromium && command -v promtool; } >/dev/null; then \
		apt-get install -y -qq --no-install-recommends $(APT_TEST_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && \
		  apt-get install -y -qq --no-install-recommends $(APT_TEST_PACKAGES) >/dev/null 2>&1; }; \
	fi
	touch $@

run: $(VENV)/.installed
	TIERMEM_PORT=$(PORT) $(BIN)/tiermem serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check app kernels memory_tiers tests benchmarks
	$(BIN)/ruff format --check app kernels memory_tiers tests benchmarks
	$(BIN)/mypy

# The tests start their own PostgreSQL, Redis and S3 servers on free ports.
test: lint
	$(BIN)/python -m pytest

check: test

bench: $(VENV)/.installed-test
	$(BIN)/tiermem bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
