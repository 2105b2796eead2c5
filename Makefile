# Two entry points for a fresh machine: `make quickstart` and `make test`.
# TORCH_SPEC is installed first so pip never pulls a multi-GB CUDA wheel on CPU machines;
# GPU users override it, e.g. `make TORCH_SPEC='torch==2.4.1 --index-url ...' quickstart`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin

.PHONY: install quickstart test clean

$(BIN)/tft2v: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/tft2v

quickstart: install
	$(BIN)/tft2v quickstart

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
