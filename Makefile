# The two commands a newcomer needs: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install lint typecheck bench bench-latency bench-scale stack-up stack-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m services.stack.install
	touch $(STAMP)

demo: install
	$(PY) -m services.cli demo

# the 30 slowest tests are listed at the end: the whole suite must stay under 20 minutes on 2 cores (CI).
# TEST_WORKERS processes share the tests file by file, each with servers of its own (docs/operations.md,
# "Running the tests"); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services

bench: install
	$(PY) -m bench

# only the latency rows against the relay floor (a few minutes); prints the report, leaves docs/benchmarks.md alone
bench-latency: install
	$(PY) -m bench --latency-only

# only the scale rows (issue 12: 2 workers vs 1 on 4 partitions, 1 worker on 4 vs 1 partition; group scope; both
# transports, 3 repeats; a few minutes); prints the report, leaves docs/benchmarks.md alone
bench-scale: install
	$(PY) -m bench --scale-only

stack-up: install
	$(PY) -m services.cli stack up

stack-down: install
	$(PY) -m services.cli stack down

clean:
	rm -rf $(VENV) .streamlearn .pytest_cache .mypy_cache .ruff_cache .hypothesis
