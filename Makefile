# Switchyard: `make demo` runs the whole thing locally, `make test` runs the test suite. Both install from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test demo bench lint clean stop help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the server, the agent and the test tools

test: install  ## run the whole test suite (embedded PostgreSQL/Redis unless SWITCHYARD_*_URL are set)
	$(BIN)/python -m pytest

demo: install  ## embedded services, web :8000, gateway :8400, Celery, simulated fleet + load; Ctrl-C stops all
	$(BIN)/python manage.py demo

bench: install  ## run the ingest benchmark against a fresh server (prints figures)
	$(BIN)/python bench/ingest.py

lint: install  ## ruff
	$(BIN)/ruff check .

stop:  ## stop embedded PostgreSQL/Redis left running by a killed process
	$(BIN)/python -m core.embedded stop

clean:  ## remove the virtualenv (keeps .var data)
	rm -rf $(VENV)
