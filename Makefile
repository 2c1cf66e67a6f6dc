# flightrec: `make setup` once on a fresh Debian 12 machine (as root), then
# `make test`. `make` alone builds the C and BPF parts.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: all build setup test clean

all: build

build:
	$(MAKE) -C bpf

setup:
	bash scripts/install-deps.sh
	$(PYTHON) -m pip install -q -e '.[test]'
	$(MAKE) build

test: build
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS) tests

clean:
	$(MAKE) -C bpf clean
