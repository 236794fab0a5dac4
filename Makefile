# Two commands a newcomer needs: `make demo` and `make test`. Both start with `make setup`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

# The main job: the Gradio app on 127.0.0.1 with the shipped checkpoints (prints its URL).
demo: setup
	$(VENV)/bin/offseg demo

lint: setup
	$(VENV)/bin/ruff check offseg_vis tests scripts

test: setup lint
	OFFSEG_FAST=1 $(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
