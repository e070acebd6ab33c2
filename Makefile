# Two commands set everything up on a fresh machine with Python 3.11 and pip:  make demo   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch 2.13.0 lies in /opt/wheels on our machines; elsewhere pip takes PyPI's build.
TORCH_LINKS := $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,)
export BI_PIPELINE_HOME ?= $(CURDIR)/.bi_pipeline
export GX_ANALYTICS_ENABLED ?= false

.PHONY: install demo run ui test test-fast lint bench clean prod-up prod-down

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_LINKS) "torch==2.13.0"
	$(BIN)/python -m pip install -q $(TORCH_LINKS) -e '.[dev]'
	@touch $@

demo: install  ## generate demo data and materialize every asset end to end (embedded SQLite, local files)
	$(BIN)/bi-pipeline demo

run: install  ## materialize every asset on what is in the landing zone
	$(BIN)/bi-pipeline run

ui: install  ## the Dagster UI on the same instance: http://127.0.0.1:3000
	$(BIN)/bi-pipeline ui

test: install  ## lint, then the test suite
	$(BIN)/ruff check bi_pipeline bi_pipeline_tests
	$(BIN)/python -m pytest -q

test-fast: install  ## lint, then the tests not marked slow (a quick loop while editing; CI runs `make test`)
	$(BIN)/ruff check bi_pipeline bi_pipeline_tests
	$(BIN)/python -m pytest -q -m "not slow"

bench: install  ## ingestion benchmark at 1M rows (see README for M5 scale)
	$(BIN)/bi-pipeline bench ingest --series 10000 --periods 100 --out bench_ingest_1m.json

prod-up: install  ## a local production cluster on the machine's PostgreSQL and Redis: Celery workers, daemon, UI, MLflow server (docs/production.md)
	deploy/cluster.sh up

prod-down:  ## stop every service `make prod-up` started (`deploy/cluster.sh status` says what runs)
	deploy/cluster.sh down

clean:
	rm -rf $(BI_PIPELINE_HOME)
