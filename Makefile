# Two entry points for a fresh machine (see README.md):
#   make run   - the agent on loopback in front of a sample cluster DNS
#   make test  - the whole test suite (system packages, then pytest)
VENV ?= .venv
PYTHON ?= python3

.PHONY: run test bench

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/nodecache demo

test: $(VENV)/.installed
	scripts/install-system-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(VENV)/.installed
	scripts/install-system-deps
	bench/run
