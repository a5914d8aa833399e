# `make demo` and `make test` set everything up in .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without an NVIDIA GPU, pin the CPU build of PyTorch so pip never pulls the CUDA wheels.
# Off this project's machines, point TORCH_INDEX at PyTorch's CPU wheel index.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
TORCH_INDEX ?=
INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
TINY := models/tiny-bonito

.PHONY: setup test test-fast demo lint bench clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(CONSTRAINTS) $(INDEX) -e '.[dev,docs,ray]'
	touch $@

$(TINY)/config.json: | setup
	$(BIN)/bonito tiny-model $(TINY)

demo: setup $(TINY)/config.json
	$(BIN)/bonito generate examples/passages.jsonl --task-type ynqa --task-type exqa \
		--task-type nli --model $(TINY) --engine transformers --output runs/demo --overwrite
	@echo "tasks: runs/demo/tasks.jsonl   summary: runs/demo/summary.json"

# The tests also cover the llama.cpp engine: llama-cpp-python is built from source where pip
# finds no wheel (about 5 minutes on 2 cores); if it cannot be built, those tests skip.
$(BIN)/.installed-llamacpp: $(BIN)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF" \
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install -q $(CONSTRAINTS) $(INDEX) -e '.[dev,docs,llamacpp]' \
		|| echo "llama-cpp-python could not be installed: the llamacpp tests will skip"
	touch $@

test: setup $(BIN)/.installed-llamacpp
	$(BIN)/pytest -q

# The tests that load no model and start no process: a loop of about a minute while working.
test-fast: setup
	$(BIN)/pytest -q -m "not heavy"

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

bench: setup
	$(BIN)/python bench/batching.py
	$(BIN)/python bench/chunking.py
	$(BIN)/python bench/run_store.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/ranked_classification.py
	$(BIN)/python bench/ray_scaling.py

clean:
	rm -rf $(VENV) models runs
