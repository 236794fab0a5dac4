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

# The numerical tests run a second time on other MKL code paths (the SSE4.2 kernels, reproducible
# "compatible" mode), so a tolerance that only holds on this machine's CPU fails here too. The slow
# ones (ONNX export, minutes each) run once: their tolerance is 1e-4 of the logit scale, far above
# any code path's rounding.
test: setup lint
	OFFSEG_FAST=1 $(PY) -m pytest -q --durations=15 tests
	MKL_CBWR=COMPATIBLE MKL_ENABLE_INSTRUCTIONS=SSE4_2 OFFSEG_FAST=1 $(PY) -m pytest -q -m "numeric and not slow" tests

clean-venv:
	rm -rf $(VENV)
