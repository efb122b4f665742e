# Two commands do all the set-up on a fresh machine (README):
#   make run    create .venv on first use, install, run the main job (the `quick` study)
#   make test   create .venv on first use, install, run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# A new .venv peaks at 7,272 MiB on disk while pip installs it (torch's CUDA build; 6,973 MiB
# once installed), measured 2026-11-30. Checked first, on the disk that will hold it, so a full
# disk is one clear message and not pip's "No space left on device" half-way.
VENV_NEED_MIB ?= 7500

.PHONY: run test install bench ui clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import shutil, sys; from pathlib import Path; \
	  venv, need = sys.argv[1], sys.argv[2]; \
	  need.isdigit() or sys.exit(f"make: VENV_NEED_MIB={need!r} is invalid: allowed is a whole number of MiB"); \
	  d = next(p for p in Path(venv).absolute().parents if p.is_dir()); \
	  free = shutil.disk_usage(d).free >> 20; \
	  free >= int(need) or sys.exit(f"make: not enough disk for a new environment {venv}: " \
	    f"{free} MiB free on the disk of {d}, and installing it needs about {need} MiB " \
	    "(VENV_NEED_MIB). Free some space, or give VENV= a folder on a larger disk.")' \
	  $(VENV) $(VENV_NEED_MIB)
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
