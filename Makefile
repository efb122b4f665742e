# Two commands do all the set-up on a fresh machine (README):
#   make run    create .venv on first use, install, run the main job (the `quick` study)
#   make test   create .venv on first use, install, run the tests
# Both install the exact versions of requirements.lock (made from pyproject.toml's ranges by
# `make lock`), so every machine installs what was tested:
#   make lock                       re-solve the lock after a change to pyproject.toml,
#                                   keeping every pin that still fits
#   make lock LOCK_ARGS=--upgrade   move every pin to the newest release the ranges allow
#   make test-latest                the suite on the newest releases the ranges allow, in
#                                   .venv-latest (not CI; before `make lock LOCK_ARGS=--upgrade`)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
# the pip that installs the lock, and the pip-tools that writes it (pip-compile)
PIP_VERSION      ?= 26.3
PIP_TOOLS_VERSION ?= 7.7.0
LOCK_VENV  ?= .venv-lock
LATEST_VENV ?= .venv-latest
LOCK_ARGS ?=
# A new .venv peaks at 7,272 MiB on disk while pip installs it (torch's CUDA build; 6,973 MiB
# once installed), measured 2026-11-30. Checked first, on the disk that will hold it, so a full
# disk is one clear message and not pip's "No space left on device" half-way.
VENV_NEED_MIB ?= 7500

.PHONY: run test install bench ui clean lock test-latest docs docs-serve

# The disk check for a new environment $(1): one line and exit 2 when it cannot fit
define disk_check
	@test -x $(1)/bin/python || $(PYTHON) -c 'import shutil, sys; from pathlib import Path; \
	  venv, need = sys.argv[1], sys.argv[2]; \
	  need.isdigit() or sys.exit(f"make: VENV_NEED_MIB={need!r} is invalid: allowed is a whole number of MiB"); \
	  d = next(p for p in Path(venv).absolute().parents if p.is_dir()); \
	  free = shutil.disk_usage(d).free >> 20; \
	  free >= int(need) or sys.exit(f"make: not enough disk for a new environment {venv}: " \
	    f"{free} MiB free on the disk of {d}, and installing it needs about {need} MiB " \
	    "(VENV_NEED_MIB). Free some space, or give VENV= a folder on a larger disk.")' \
	  $(1) $(VENV_NEED_MIB)
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call disk_check,$(VENV))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/vaesweep -m +sweep=quick $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

# the documentation site (docs/mkdocs.yml) into build/site, offline; tests/test_docs.py runs
# the same strict build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -f docs/mkdocs.yml -a 127.0.0.1:8000

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# requirements.lock from pyproject.toml's ranges (the `dev` extra, which holds the launchers'),
# with hashes; pip-tools lives in its own small environment
lock:
	@test -x $(LOCK_VENV)/bin/pip-compile || ( $(PYTHON) -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION) )
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --extra dev \
	  --allow-unsafe --strip-extras --generate-hashes --no-emit-index-url --no-emit-find-links \
	  $(LOCK_ARGS) -o $(LOCK) pyproject.toml

# The suite on the newest releases pyproject.toml's ranges allow (not the lock), in a fresh
# $(LATEST_VENV); its versions.txt lists what was installed, and what differs from the lock
# is printed first. Run it before moving the lock (`make lock LOCK_ARGS=--upgrade`).
test-latest:
	rm -rf $(LATEST_VENV)
	$(call disk_check,$(LATEST_VENV))
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python .ci/lock_diff.py $(LOCK) $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest $(ARGS)

clean:
	rm -rf outputs multirun
