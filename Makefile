# msynth developer and user entry points. `make demo` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.msynth-installed
DEMO ?= demo

.PHONY: install test demo clean

install: $(STAMP)

# torch is pinned to 2.13.0 when no torch is present. This machine's package index serves a CPU wheel; elsewhere pip
# takes PyPI's standard build (with CUDA libraries). Install a CPU-only torch 2.13.0 first to avoid that download.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

test: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python -m pytest

# A synthetic cohort at 4 mm (2 controls, 2 patients), then the participant level on it.
demo: $(STAMP)
	$(BIN)/msynth-phantom $(DEMO)/bids --n-controls 2 --n-patients 2 --voxel-size 4 --seed 42 --overwrite
	$(BIN)/msynth $(DEMO)/bids $(DEMO)/derivatives participant -w $(DEMO)/work
	@echo "demo: participant outputs are in $(DEMO)/derivatives; the group level is not implemented yet."

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
