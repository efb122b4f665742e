# Two commands do all the set-up on a fresh machine (README):
#   make run    create .venv on first use, install, run the main job (the `quick` study)
#   make test   create .venv on first use, install, run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# A new .venv peaks at 7.3 GB on disk while pip installs it (torch's CUDA build; 7.0 GB once
# installed), measured 2026-11-30. Checked first, so a full disk is one clear message and not
# pip's "No space left on device" half-way through an environment.
VENV_NEED_MB ?= 7500

.PHONY: run test install bench ui clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import os, shutil, sys; \
	  d = os.path.dirname(os.path.abspath(sys.argv[1])); need = int(sys.argv[2]); \
	  free = shutil.disk_usage(d).free >> 20; \
	  free >= need or sys.exit(f"make: not enough disk for a new environment {sys.argv[1]}: " \
	    f"{free} MB free under {d}, and installing it needs about {need} MB (VENV_NEED_MB). " \
	    "Free some space, or point VENV= at a larger disk.")' $(VENV) $(VENV_NEED_MB)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/vaesweep -m +sweep=quick $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs multirun
