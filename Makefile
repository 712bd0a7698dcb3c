# cri-shim: `make demo` and `make test` do all set-up on a fresh Debian machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
COMPAT := .venv-compat

.PHONY: all deps system-deps venv compat-venv proto test unit privileged fuzz soak demo demo-cluster bench clean

all: test

deps: system-deps venv compat-venv

system-deps:
	@hack/install-system-deps

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The independently generated CRI stubs (PyPI container-runtime-interface-api) clash
# with ours in one process and want another protobuf: they get their own venv.
compat-venv: $(COMPAT)/.installed
$(COMPAT)/.installed:
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install --quiet --disable-pip-version-check container-runtime-interface-api==2.0.1
	touch $@

proto: venv
	PYTHON=$(PY) hack/gen-proto

# Every test, privileged ones included: CRI_SHIM_REQUIRE_ALL turns a skip for a
# missing prerequisite (root, plugins, compat venv) into a failure.
test: deps
	CRI_SHIM_REQUIRE_ALL=1 $(PY) -m pytest -q tests

unit: venv
	$(PY) -m pytest -q tests/unit

privileged: deps
	CRI_SHIM_REQUIRE_ALL=1 $(PY) -m pytest -q -m privileged tests

# Issue 14's long runs (not in make test, which runs short versions of each).
fuzz: deps
	CRI_SHIM_REQUIRE_ALL=1 CRI_SHIM_FUZZ=long $(PY) -m pytest -q tests/privileged/test_fuzz.py

soak: deps
	CRI_SHIM_REQUIRE_ALL=1 CRI_SHIM_SOAK=long $(PY) -m pytest -q -s tests/privileged/test_soak.py

demo: system-deps venv
	$(PY) hack/demo

# Three nodes (etcd, agents, cri-shim, the flannel plugin, VXLAN) in throwaway namespaces.
demo-cluster: system-deps venv
	$(PY) hack/demo-cluster

# Issue 5: cri-shim against the raw CNI chain, as root, in throwaway namespaces
# (about 6.5 minutes on 2 cores); prints the ratios next to their targets.
bench: system-deps venv
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) hack/bench --json bench-out/bench.json --plot bench-out

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache *.egg-info
