# The two commands: `make run` (the gateway locally, with everything it needs) and `make test` (the whole suite).
# `make run` installs only what running needs (setup-run); `make test` installs the test toolchain on top (setup).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_NODE := node_modules/.installed
STAMP_CHECKOV := .venv-checkov/.installed

.PHONY: setup setup-run test test-faults test-unit lint typecheck run services gateway bench bench-replay clean

# What running needs: the app's requirements, the local runtime's (requirements-local.txt) and the npm packages of
# the local services (Azurite, the FHIR server).
setup-run: $(STAMP_RUN) $(STAMP_NODE)

# Everything: the above, the test and dev tools (requirements-dev.txt) and checkov's own venv.
setup: setup-run $(STAMP_DEV) $(STAMP_CHECKOV)

$(STAMP_RUN): requirements.txt requirements-local.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(STAMP_DEV): $(STAMP_RUN) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# checkov scans infra/ offline; it pins an old `packaging` that pytest refuses, so it gets a venv of its own.
$(STAMP_CHECKOV):
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --upgrade pip
	.venv-checkov/bin/python -m pip install --quiet checkov==3.3.30
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck: $(STAMP_DEV)
	$(VENV)/bin/mypy shared tools devhost function_app.py orchestrators activities

# Runs lint, types and every test tier; pytest starts (and always stops) Azurite, the FHIR server and the
# token endpoint on free loopback ports.
test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: setup
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

test-unit: $(STAMP_DEV)
	$(PY) -m pytest -m "not integration and not e2e and not faults" $(PYTEST_ARGS)

# `make run INSTANCES=2` (or `make gateway INSTANCES=2`) runs the gateway as 2 instances on one state, as scaled out.
ifdef INSTANCES
export WRITEBACK_DEV_INSTANCES := $(INSTANCES)
endif

# `make run EASYAUTH=1` (or `make gateway EASYAUTH=1`) puts the App Service Authentication emulation in front of the
# gateway: sign-in through the local OpenID provider, and client-sent X-MS-CLIENT-PRINCIPAL headers ignored.
ifdef EASYAUTH
export WRITEBACK_DEV_EASYAUTH := $(EASYAUTH)
endif

# Everything in the foreground: Azurite, the FHIR server, the token endpoint, the OpenID provider and the gateway.
# Ctrl-C stops all.
run: setup-run
	$(PY) -m tools.services --with-gateway

# Only the local services (then `make gateway` in another terminal, to restart the gateway alone, or `func start`
# with Core Tools): also writes local.settings.json for Core Tools, pointed at them.
services: setup-run
	$(PY) -m tools.services --local-settings local.settings.json

gateway: setup-run
	$(PY) -m devhost --local-services "$${WRITEBACK_DEV_STATE_DIR:-.local}/endpoints.json"

# The benchmarks against DESIGN.md §11 (about 2 minutes); rewrites docs/benchmarks.md and docs/benchmarks.json.
bench: setup
	$(PY) -m tools.bench $(BENCH_ARGS)

bench-replay: setup
	$(PY) -m tools.bench_replay

clean:
	rm -rf $(VENV) .venv-checkov node_modules .local .mypy_cache .ruff_cache
