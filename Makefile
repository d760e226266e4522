# The README's two commands: `make demo` and `make test`. Both create or reuse
# .venv with the Python found on this machine, install the project with its
# dev extras, fetch the delta-spark jars, check Java, then run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3 || command -v python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Written by a delta-spark jar fetch that succeeded (the coordinate it fetched).
DELTA_JARS := $(VENV)/delta-jars/coordinates.txt
DEMO_OUTPUT ?= output/demo
DEMO_ARGS ?=
PYTEST_ARGS ?=
# Every test run prints its 15 slowest tests; pytest-timeout stops a hung test.
# PYTEST_WORKERS=auto runs tests in one worker per core (at most 4), each with its own local Spark; tests
# that share a fixture stay in one worker (tests/conftest.py). PYTEST_WORKERS=0 runs
# them all in this process (the default: on 2 cores workers were no faster).
PYTEST_WORKERS ?= 0
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest --durations=15 -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadgroup

.PHONY: demo test test-fast install check-java lint dist clean

demo: check-java $(STAMP) $(DELTA_JARS)
	$(BIN)/usersegments demo --config conf/local.yaml --output $(DEMO_OUTPUT) $(DEMO_ARGS)

# Everything: the README's and CI's command.
test: check-java $(STAMP) $(DELTA_JARS)
	$(PYTEST) $(PYTEST_ARGS)

# The unit lane (under 2 minutes): everything not marked slow (end-to-end runs,
# spark-submit jobs, notebooks, the planted run and its users, tests over ~3 s)
# nor delta_spark (make test runs the store tests on both backends).
test-fast: check-java $(STAMP) $(DELTA_JARS)
	$(PYTEST) -m "not slow and not delta_spark" $(PYTEST_ARGS)

install: $(STAMP) $(DELTA_JARS)

# Local installs pin torch==2.13.0 (constraints/local.txt); the library
# itself accepts a range so clusters can bring their CUDA build.
$(STAMP): pyproject.toml constraints/local.txt
	@test -n "$(PYTHON)" || { echo "No python3 found: install Python 3.10+ (e.g. apt-get install -y python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "usersegments needs Python 3.10+, found " + sys.version.split()[0] + " at " + sys.executable)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "Cannot create $(VENV): install the venv module (e.g. apt-get install -y python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/local.txt -e '.[dev]'
	@touch $(STAMP)

# The delta-spark jars a local session puts on its classpath, for the installed
# pyspark and delta-spark: Maven (deps/delta/pom.xml) copies them into
# .venv/delta-jars and keeps its downloads in ~/.m2, so a second make fetches
# nothing. Without Maven or Central the fetch says so in one line and make goes
# on with delta-rs only (and the delta-spark tests then fail under CI=true).
$(DELTA_JARS): $(STAMP) deps/delta/pom.xml
	@$(BIN)/python -m usersegments.delta_jars fetch --pom deps/delta/pom.xml

check-java:
	@java_bin="$${JAVA_HOME:+$$JAVA_HOME/bin/}java"; \
	if ! command -v "$$java_bin" >/dev/null 2>&1; then \
	  echo "Java 17+ is required by Spark and was not found. Install it (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless; macOS: brew install openjdk@17) and put it on PATH or set JAVA_HOME."; exit 1; \
	fi; \
	major=$$("$$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -1 | awk '{ print ($$1 == 1 ? $$2 : $$1) }'); \
	if [ -z "$$major" ] || [ "$$major" -lt 17 ]; then \
	  echo "Java 17+ is required by Spark; found '$$("$$java_bin" -version 2>&1 | head -1)'. Install openjdk-17 and put it first on PATH or set JAVA_HOME."; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs benchmarks notebooks
	$(BIN)/ruff format --check lib tests jobs benchmarks notebooks

dist: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf output dist build lib/*.egg-info .pytest_cache
