# Two entry points for a fresh machine (see README.md):
#   make run   - the agent on loopback in front of a sample cluster DNS
#   make test  - the whole test suite (system packages, then pytest)
VENV ?= .venv
PYTHON ?= python3
# The modules setup.py compiles with mypyc: an edit to one rebuilds the
# extensions in place, so a stale one never shadows the edited source.
COMPILED := $(shell grep -o '"nodecache/[a-z_/]*\.py"' setup.py | tr -d '"')
PYTEST = $(VENV)/bin/pytest -q -p no:cacheprovider

.PHONY: run test bench

$(VENV)/.installed: setup.py setup.cfg pyproject.toml $(COMPILED)
	$(PYTHON) -m venv $(VENV)
	# none may outlive its module's place in setup.py (the build copies the current ones back)
	find nodecache -name '*.so' -delete
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	@$(VENV)/bin/python -c 'from nodecache.build import describe; print("nodecache build:", describe())'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/nodecache demo

# The system packages come first: the build compiles only when gcc and Python.h
# are there. The whole suite runs over the compiled modules (what ships), then
# the unit tests again over pure Python (the fallback, NODECACHE_PURE=1).
test:
	scripts/install-system-deps
	$(MAKE) $(VENV)/.installed
	$(PYTEST)
	NODECACHE_PURE=1 $(PYTEST) tests/core tests/config tests/aio tests/test_build.py

bench: $(VENV)/.installed
	scripts/install-system-deps
	bench/run
