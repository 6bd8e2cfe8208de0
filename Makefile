# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= checkpoints.yaml
# torch is installed first, pinned: from PyPI this is the CUDA build on Linux x86_64 (GPU machines);
# where a local wheel of the same version is configured for pip (CPU-only machines), that wheel is used.
# Override for another CUDA or a CPU-only index, e.g.
#   make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

.PHONY: setup run test test-all readme curriculum bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/spectrum run --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the README's default-suite figures, from the artifacts of `make run`
readme: $(STAMP)
	$(BIN)/python -m spectrum.tools.readme_figures artifacts README.md

# the curriculum export and its controlled test on the default suite (after `make run`), and
# their figures in the README
curriculum: $(STAMP)
	$(BIN)/spectrum export-curriculum --config $(CONFIG) --target-steps 128
	$(BIN)/spectrum curriculum-test --config $(CONFIG)
	$(BIN)/python -m spectrum.tools.readme_figures artifacts README.md

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf artifacts runs
