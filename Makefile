# Newcomer entry points: `make demo` (set up + plan/compile/run ResNet-18 on the
# emulated 3-board cluster) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench golden clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m edgeplan.demo

lint: setup
	$(BIN)/ruff check edgeplan tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks

golden: setup
	$(BIN)/python -m pytest -q tests --update-golden

clean:
	rm -rf $(VENV) build *.egg-info demo-out
