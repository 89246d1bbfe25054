# `make serve` and `make test` are all the set-up a fresh clone needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve test test-system lint typecheck examples grpc-stubs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: here torch==2.13.0 resolves to the CPU build on local disk, where the
# bare "torch" of the `all` extra would pull a multi-GB CUDA build. On a GPU machine, point
# TORCH at a CUDA build instead (make install TORCH="torch==2.13.0 --index-url ...").
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,test,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(PY) -m server --config config.toml

# What CI runs (.ci/run): the habits first (lint, format, strict types), then the suite.
test: install test-system lint typecheck
	$(PY) -m pytest

# System packages the tests drive: chromium, for /docs in a real browser
# (tests/live/test_docs_browser.py, through Playwright), PostgreSQL, a throwaway cluster
# that `cinfer batch` writes its tables to (tests/batch/), and redis-server, the shared
# response cache the tests start on a free port (tests/live/test_cache.py). Debian keeps
# initdb off the PATH. CI runs as root.
test-system:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

lint: install
	$(VENV)/bin/ruff check server tests tools
	$(VENV)/bin/ruff format --check server tests tools

typecheck: install
	$(VENV)/bin/mypy

# Retrain the sample models from the data sets bundled with scikit-learn.
examples: install
	$(PY) -m pip install -q -e '.[examples]'
	$(PY) tools/make_examples.py repository

# Regenerate the gRPC door's stubs (server/grpc/generated/) from server/grpc/protos/.
grpc-stubs: install
	PYTHON=$(PY) server/grpc/protos/generate.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
