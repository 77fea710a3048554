# Every target creates the virtualenv (.venv) from pyproject.toml on first use;
# a fresh machine needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# `make demo` installs only the package and its `demo` extra, not the dev tools.
DEMO_STAMP := $(VENV)/.installed-demo

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint typecheck pytest docs-check bench fleet-sim clean

help:
	@echo "make demo    the cascading-failure lab: plain httpx vs an HAProxy sidecar vs resilience"
	@echo "make test    lint, type-check, run the whole test suite and build the docs"
	@echo "make bench   per-call overhead next to a bare call, a minimal decorator and the peers"
	@echo "make fleet-sim  the Redis fleet protocol simulation, long run (FLEET_SIM_EXAMPLES)"
	@echo "make clean   remove the virtualenv and build output"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing resilience and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --upgrade "pip>=25.1" \
	  && $(BIN)/python -m pip install --editable ".[demo]" --group dev; } > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing resilience and the demo's dependencies into $(VENV) (log: $(VENV)/install-demo.log)"
	@{ $(BIN)/python -m pip install --upgrade "pip>=25.1" \
	  && $(BIN)/python -m pip install --editable ".[demo]"; } > $(VENV)/install-demo.log 2>&1 \
	  || { tail -n 40 $(VENV)/install-demo.log; exit 1; }
	@touch $(DEMO_STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

typecheck: $(STAMP)
	$(BIN)/python -m mypy --strict resilience tests/typing

pytest: $(STAMP)
	$(BIN)/python -m pytest

# --strict fails on any warning; --quiet would hide the warnings (griffe's included)
# and so let them pass: it is not used.
docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir $(VENV)/site
	$(BIN)/python docs/check_links.py $(VENV)/site

# Plots and figures go to demo-output/ (git-ignored). The sidecar arm needs
# haproxy (apt-get install haproxy); without it the demo runs the other arms.
demo: $(DEMO_STAMP)
	$(BIN)/python -m resilience.demo --scenario all

test: lint typecheck pytest docs-check

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py --json benchmarks/results/core.json
	$(BIN)/python benchmarks/bench_breaker.py --json benchmarks/results/breaker.json
	$(BIN)/python benchmarks/bench_retry.py --json benchmarks/results/retry.json
	$(BIN)/python benchmarks/bench_transport.py --json benchmarks/results/transport.json
	$(BIN)/python benchmarks/bench_redis.py --json benchmarks/results/redis.json
	$(BIN)/python benchmarks/bench_limit.py --json benchmarks/results/limit.json
	$(BIN)/python benchmarks/bench_sidecar.py --json benchmarks/results/sidecar.json
	$(BIN)/python benchmarks/bench_hedge.py --json benchmarks/results/hedge.json

# The simulation of tests/integrations/test_redis_protocol.py, with many more
# random schedules than `make test` runs (needs redis-server on PATH).
FLEET_SIM_EXAMPLES ?= 2000
FLEET_SIM_STEPS ?= 80
fleet-sim: $(STAMP)
	FLEET_SIM_EXAMPLES=$(FLEET_SIM_EXAMPLES) FLEET_SIM_STEPS=$(FLEET_SIM_STEPS) \
	  $(BIN)/python -m pytest -s -p no:cacheprovider \
	  tests/integrations/test_redis_protocol.py::test_fleet_protocol_simulation

clean:
	rm -rf $(VENV) site demo-output .mypy_cache .ruff_cache .pytest_cache .hypothesis
