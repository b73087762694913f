# msynth developer and user entry points. `make demo` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.msynth-installed
DEMO ?= demo
SLURM_DIR ?= $(CURDIR)/.slurm-localhost
SLURM_CLUSTER := containers/slurm/localhost-cluster.sh

.PHONY: install test demo clean system-deps

install: $(STAMP)

# torch is pinned to 2.13.0 when no torch is present. This machine's package index serves a CPU wheel; elsewhere pip
# takes PyPI's standard build (with CUDA libraries). Install a CPU-only torch 2.13.0 first to avoid that download.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The SLURM test (tests/test_slurm.py) submits to a single-node SLURM on this machine, started before pytest and
# stopped after it whatever pytest's outcome (its configuration, state and logs in $(SLURM_DIR)); where it cannot
# start, that test skips and says why.
test: $(STAMP) system-deps
	@trap '$(SLURM_CLUSTER) stop $(SLURM_DIR)' EXIT; trap 'exit 130' INT TERM; \
	$(SLURM_CLUSTER) start $(SLURM_DIR) || echo "no localhost SLURM: the SLURM test will skip"; \
	SLURM_CONF=$(SLURM_DIR)/slurm.conf PYTHONHASHSEED=0 $(BIN)/python -m pytest

# The group report's screenshot test renders the report in Debian's chromium, and the SLURM test needs Debian's
# slurm-wlm and munge. Install them when absent and this is root with apt-get; otherwise (or if the install fails)
# those tests skip and say why.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300
system-deps:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { echo "installing Debian's chromium (group report screenshot test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "could not install chromium: the group report screenshot test will skip"
	@{ command -v sbatch && command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null || \
	  ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { echo "installing Debian's slurm-wlm and munge (SLURM test)"; \
	    $(APT_INSTALL) update -qq >/dev/null 2>&1 && \
	    $(APT_INSTALL) install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1; } || \
	  echo "could not install slurm-wlm and munge: the SLURM test will skip"

# A synthetic cohort at 4 mm (2 controls, 2 patients), then the participant and group levels on it. The phantom's PET
# resolution is 2.5-4 mm FWHM: its midpoint is given for the partial-volume correction.
demo: $(STAMP)
	$(BIN)/msynth-phantom $(DEMO)/bids --n-controls 2 --n-patients 2 --voxel-size 4 --seed 42 --overwrite
	$(BIN)/msynth $(DEMO)/bids $(DEMO)/derivatives participant -w $(DEMO)/work \
	    --lesion-masks $(DEMO)/bids/derivatives/lesions --pet-psf-fwhm 3.25
	$(BIN)/msynth $(DEMO)/bids $(DEMO)/derivatives group -w $(DEMO)/work
	@echo "demo: outputs in $(DEMO)/derivatives; one report per participant, $(DEMO)/derivatives/sub-<L>.html," \
	      "and the group report, $(DEMO)/derivatives/group/report.html"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

# Re-pin the container images' dependencies (containers/requirements.lock) after changing setup.cfg's install_requires.
.PHONY: lock
lock: $(STAMP)
	$(BIN)/python containers/lock.py
