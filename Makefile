# Two entry points (see README): `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/sctrace: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/sctrace

setup: $(BIN)/sctrace

demo: setup
	$(BIN)/sctrace demo --out sctrace_demo

test: setup
	$(BIN)/python -m pytest -q

.PHONY: setup demo test
