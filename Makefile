# Nexus: `make run` starts the engine on the embedded defaults, `make test` runs every test.
# Both create .venv on first use and are quick when it is already up to date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test lint chart-lint bench venv dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(RUNTIME_STAMP)
dev: $(DEV_STAMP)

# Development secrets for every ${env:NAME} of config/ go to var/dev.env (kept across runs);
# then the engine serves config/ on the embedded defaults (SQLite var/nexus.db, memory://).
run: $(RUNTIME_STAMP)
	$(BIN)/python scripts/dev_env.py --config config --out var/dev.env --hint
	set -a && . ./var/dev.env && set +a && exec $(BIN)/nexus serve --config config

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check engine tests bench
	$(BIN)/nexus lint config/

chart-lint:
	$$(scripts/fetch_helm.sh) lint --strict chart

bench: $(DEV_STAMP)
	$(BIN)/python bench/lint_bench.py

clean:
	rm -rf $(VENV) var .cache .pytest_cache .hypothesis
