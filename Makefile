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

.PHONY: setup test demo lint bench clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(CONSTRAINTS) $(INDEX) -e '.[dev,docs]'
	touch $@

$(TINY)/config.json: | setup
	$(BIN)/bonito tiny-model $(TINY)

demo: setup $(TINY)/config.json
	$(BIN)/bonito generate examples/passages.jsonl --task-type ynqa --task-type exqa \
		--task-type nli --model $(TINY) --engine transformers --output runs/demo --overwrite
	@echo "tasks: runs/demo/tasks.jsonl   summary: runs/demo/summary.json"

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup
	$(BIN)/python bench/batching.py
	$(BIN)/python bench/chunking.py
	$(BIN)/python bench/run_store.py
	$(BIN)/python bench/dedup.py

clean:
	rm -rf $(VENV) models runs
