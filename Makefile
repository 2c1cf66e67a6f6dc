# flightrec: `make setup` once on a fresh Debian 12 machine (as root), then
# `make test`. `make` alone builds the C and BPF parts.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: all build setup test clean

all: build

# The C programs (c/Makefile): built into build/c, where flightrec/locate.py finds them.
build: flightrec/_scan.so flightrec/_bulk.so
	$(MAKE) -C c OUT=$(CURDIR)/build/c

# The analyzer's C scanner (flightrec/parse/scan.py loads it with ctypes).
flightrec/_scan.so: flightrec/_scan.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

# Interning and row printing for the exports (flightrec/bulk.py loads it).
flightrec/_bulk.so: flightrec/_bulk.c
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

setup:
	bash scripts/install-deps.sh
	$(PYTHON) -m pip install -q -e '.[test]'
	# pyenv installs console scripts behind shims it makes on rehash.
	-command -v pyenv >/dev/null && pyenv rehash
	$(MAKE) build
	# Debian's debug kernels for the probes resolver and its tests (cached).
	sh scripts/fetch-debug-kernel.sh 6.1 6.12

test: build
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS) tests

clean:
	$(MAKE) -C c clean OUT=$(CURDIR)/build/c
	rm -f flightrec/_scan*.so flightrec/_bulk*.so
