# Two entry points (see README): `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/sctrace: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# sctimebench: the scTimeBench method's test (scTimeBench and geomloss leave the pinned torch as it is).
	$(BIN)/pip install --quiet -e '.[test,pretrained,peers,sctimebench]'
	# OT-CFM peer for benchmarks. torchcfm's declared dependencies pull torchdyn -> torchvision and a CUDA torch;
	# the module we use (conditional_flow_matching) needs only torch, numpy and POT, so install it alone.
	$(BIN)/pip install --quiet --no-deps torchcfm==1.0.7
	touch $(BIN)/sctrace

setup: $(BIN)/sctrace

demo: setup
	$(BIN)/sctrace demo --out sctrace_demo

test: setup
	$(BIN)/python -m pytest -q

.PHONY: setup demo test
