# flightrec: `make setup` once on a fresh Debian 12 machine (as root), then
# `make test` (lint, then the tests). `make` alone builds the C and BPF parts.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: all build setup lint test clean

all: build

# The C programs (c/Makefile): built into build/c, where flightrec/locate.py finds them.
build: flightrec/_scan.so flightrec/_bulk.so flightrec/_replay.so flightrec/_trips.so
	$(MAKE) -C c OUT=$(CURDIR)/build/c

# The analyzer's C scanner (flightrec/parse/scan.py loads it with ctypes).
flightrec/_scan.so: flightrec/_scan.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

# The replay's walk over the timeline (flightrec/model/replay_native.py loads it).
flightrec/_replay.so: flightrec/_replay.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

# Each descriptor's trips as flow points (flightrec/model/trips.py loads it).
flightrec/_trips.so: flightrec/_trips.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

# Interning and row printing for the exports (flightrec/bulk.py loads it).
flightrec/_bulk.so: flightrec/_bulk.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

setup:
	bash scripts/install-deps.sh
	$(PYTHON) -m pip install -q -e '.[test,lint]'
	# pyenv installs console scripts behind shims it makes on rehash.
	-command -v pyenv >/dev/null && pyenv rehash
	$(MAKE) build
	# Debian's debug kernels for the probes resolver and its tests (cached).
	sh scripts/fetch-debug-kernel.sh 6.1 6.12

# ruff with pyproject.toml's rules (pinned in its `lint` extra, which `make setup` installs).
# The C parts have their gate in their build: -Wall -Wextra -Werror.
lint:
	@$(PYTHON) -m ruff --version >/dev/null 2>&1 || { echo "lint: ruff is not installed: $(PYTHON) -m pip install -e '.[lint]' (or make setup)" >&2; exit 2; }
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: build lint
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS) tests

clean:
	$(MAKE) -C c clean OUT=$(CURDIR)/build/c
	rm -f flightrec/_scan*.so flightrec/_bulk*.so flightrec/_replay*.so flightrec/_trips*.so
