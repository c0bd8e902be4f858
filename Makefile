# limpeza: `make demo` and `make test` do all the set-up they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the demo and the test tiers use (installed only where missing).
APT_PACKAGES := python3-venv findutils util-linux procps postgresql prometheus \
	prometheus-alertmanager debootstrap systemd-container openssh-client curl time \
	pgbouncer openssl
# What only `make bench` needs: a C compiler for bench/contract.c.
BENCH_PACKAGES := gcc libc6-dev
PYTEST_ARGS ?=

.PHONY: help setup packages venv demo test lint unit integration host bench bench-quick lock clean

help:
	@echo "make demo   run the bundle end to end on an embedded default"
	@echo "make test   run every check (lint, unit, integration, host)"
	@echo "make lint   ruff, mypy, yamllint, ansible-lint, promtool"
	@echo "make bench  regenerate bench/RESULTS.md"
	@echo "make lock   hash requirements.lock's pins from the package index"

packages:
	@tools/ensure-packages $(APT_PACKAGES)

$(BIN)/.installed: pyproject.toml | packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: packages $(BIN)/.installed

setup: venv

demo: setup
	$(BIN)/python -m tools.demo

lint: setup
	$(BIN)/ruff check cleaner exporter tests bench tools devtools
	$(BIN)/ruff format --check cleaner exporter tests bench tools devtools
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --offline --profile production
	promtool check rules alerts/limpeza.rules.yml
	promtool test rules alerts/tests/*.yml

unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint
	tools/test-tiers $(PYTEST_ARGS)

bench: setup
	@tools/ensure-packages $(BENCH_PACKAGES)
	$(BIN)/python -m bench.run

bench-quick: setup
	@tools/ensure-packages $(BENCH_PACKAGES)
	$(BIN)/python -m bench.run --quick

# requirements.lock's hashes: the wheels the package index serves for every supported target.
lock: setup
	$(BIN)/python -m tools.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
