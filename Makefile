# vaultpy — developer entry points.  Every target installs what it needs.
#   make demo   install, then run renc/check/status on the demo repository
#   make test   install the test peers (age, nix, ssh) and run the full suite
#   make lint   ruff + mypy --strict
#   make bench  ratios against the age CLI and the pyrage floor (bench/results/latest.md)
#   make dev    everything a developer needs, without running anything
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := age git nix-bin openssh-client openssh-server openssl systemd util-linux strace time vim
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint dev deps bench bench-quick clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $@

deps:  ## Debian packages the tests run against (real peers, not mocks)
	@missing=""; for t in age age-keygen git nix-instantiate openssl ssh-keygen ssh-keyscan sshd setpriv strace systemd-analyze unshare /usr/bin/time vim script; do \
	  command -v $$t >/dev/null || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(APT_PACKAGES) >/dev/null; \
	fi

dev: deps $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/vaultpy renc
	$(BIN)/vaultpy check
	$(BIN)/vaultpy status

# One pytest worker per core, at most 4 (pytest-xdist): most tests wait on real
# subprocesses, and the soak tests time their kills against a machine not overloaded.
# Every test has its own directories, keys and (for OpenBao) port, so workers never
# share state; `-n 0` runs the suite in one process.
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4

test: dev
	$(PYTEST)

test-fast: dev
	$(PYTEST) -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check vaultpy tests bench
	$(BIN)/mypy --strict vaultpy

bench: dev
	$(BIN)/python bench/bench.py

bench-quick: dev
	$(BIN)/python bench/bench.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
