# Every target the README and .ci/run call. The virtual environment holds everything the
# project needs beyond what a new machine has (Rust, CPython 3.11, pip, maturin).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install build demo test test-python test-rust lint bench clean

# The venv is rebuilt when the project's dependencies or Rust sources change.
$(BIN)/.installed: pyproject.toml Cargo.toml Cargo.lock $(shell find rust -name '*.rs' -o -name Cargo.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(BIN)/.installed

# Rebuild the extension in place after changing Rust code (release profile).
build: install
	test -x $(BIN)/maturin || $(BIN)/python -m pip install --quiet 'maturin>=1.7,<2'
	$(BIN)/maturin develop --release --quiet

demo: install
	$(BIN)/qdispatch demo

test: test-rust test-python

test-rust:
	cargo test --locked -p qdispatch-wire -p qdispatch-client --quiet

test-python: install
	$(BIN)/python -m pytest -q

lint: install
	cargo fmt --all --check
	cargo clippy --locked --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest qdispatch._native --mypy-config-file pyproject.toml

bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m pytest benches --benchmark-enable -q

clean:
	rm -rf $(VENV) target build dist .pytest_cache .mypy_cache .ruff_cache
