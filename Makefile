# Every target the README and .ci/run call. The virtual environment holds everything the
# project needs beyond what a new machine has (Rust, CPython 3.11, pip, maturin).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install build demo test test-python test-rust lint lint-rust lint-python bench dist-tools \
	wheel test-wheel clean

# The Cargo profile of the extension built in place: `develop` (Cargo.toml) builds in a
# fraction of release's time; `make bench` builds with release, as wheels are.
PROFILE ?= develop

# The venv is rebuilt when the project's dependencies or Rust sources change.
$(BIN)/.installed: pyproject.toml Cargo.toml Cargo.lock $(shell find rust -name '*.rs' -o -name Cargo.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	MATURIN_PEP517_ARGS="--profile $(PROFILE)" $(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(BIN)/.installed

# Rebuild the extension in place after changing Rust code.
build: install
	test -x $(BIN)/maturin || $(BIN)/python -m pip install --quiet 'maturin>=1.9.3,<2'
	$(BIN)/maturin develop --profile $(PROFILE) --quiet

demo: install
	$(BIN)/qdispatch demo

test: test-rust test-python

# With the extension's profile: the dependencies `make install` built are built once.
test-rust:
	cargo test --locked --profile $(PROFILE) -p qdispatch-wire -p qdispatch-client --quiet

# Test files run side by side in PYTEST_WORKERS processes (pytest-xdist), a file's tests
# in one of them (module fixtures start one service a file): most of a test's time is spent
# waiting on services, workers and clocks, so two run in about half the time on two cores.
PYTEST_WORKERS ?= 2

test-python: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

lint: lint-rust lint-python

lint-rust:
	cargo fmt --all --check
	cargo clippy --locked --all-targets -- -D warnings

lint-python: install
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest qdispatch._native --mypy-config-file pyproject.toml

# Its install builds the extension anew with the release profile (maturin's default).
bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m pytest benches --benchmark-enable -q

# The tools `make wheel` needs (maturin, ziglang, auditwheel, twine): pyproject.toml's
# `dist` dependency group, which pip >= 25.1 installs without building the project.
dist-tools: $(BIN)/.dist-tools

$(BIN)/.dist-tools: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --group dist
	touch $@

# A wheel clusters can install, and the sdist, in dist/. abi3 (any CPython >= 3.10) and
# linked by zig against glibc 2.17 (manylinux2014), so it installs on RHEL/Rocky 7, 8, 9 and
# the like without Rust; the release profile is Cargo.toml's. auditwheel must find no symbol
# newer than glibc 2.17, twine the metadata an index would show valid.
#
# The unwinder must be the system's libgcc_s.so.1, as in a gcc build: zig links its own
# libunwind into the extension instead, and glibc's pthread_exit (which Python calls for a
# daemon thread that wakes during interpreter shutdown) unwinds through our Rust frames with
# libgcc_s, whose context the static libunwind misreads: a segfault at exit. Linking any
# libgcc_s.so.1 (only its GCC_3.0..4.2.0 symbols are used) makes the references dynamic.
LIBGCC_S = $(shell cc -print-file-name=libgcc_s.so.1)

wheel: $(BIN)/.dist-tools
	@test -f "$(LIBGCC_S)" || { echo "no libgcc_s.so.1 found by cc -print-file-name"; exit 1; }
	rm -f dist/qdispatch-*.whl dist/qdispatch-*.tar.gz
	$(BIN)/maturin build --release --locked --zig --compatibility manylinux2014 --out dist \
	  -- -C link-arg=$(LIBGCC_S)
	$(BIN)/maturin sdist --out dist
	mkdir -p build
	$(BIN)/auditwheel show dist/qdispatch-*.whl | tee build/auditwheel.txt
	tr -s ' \n' '  ' < build/auditwheel.txt \
	  | grep -q 'platform tag: "manylinux_2_\(5\|12\|17\)_x86_64"'
	$(BIN)/twine check --strict dist/qdispatch-*

# The wheel in dist/ installed into a new virtual environment, with no Rust on PATH, and
# the demo run from it (qiskit, qiskit-aer and the rest come from the package index).
test-wheel: install
	@ls dist/qdispatch-*.whl >/dev/null 2>&1 || { echo "no wheel in dist/: make wheel"; exit 1; }
	QDISPATCH_WHEEL="$$(ls dist/qdispatch-*.whl)" $(BIN)/python -m pytest -q tests/test_wheel.py

clean:
	rm -rf $(VENV) target build dist .pytest_cache .mypy_cache .ruff_cache
