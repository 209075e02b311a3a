# Two commands, each works from a clean clone on a fresh machine:
#   make demo   -- set everything up and run the main job
#   make test   -- set everything up and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: all demo test test-fast test-ddp lint bench install clean

all: test

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is the CPU wheel on this machine's disk; install it first so that nothing pulls a CUDA build.
	$(PY) -m pip install -q -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-info demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check lightning_info tests examples benchmarks
	$(PY) -m ruff format --check lightning_info tests examples benchmarks

test-fast: $(STAMP)
	$(PY) -m pytest -m "not ddp" -q

# pytest exits 5 when a marker selects nothing; that is not a failure here.
test-ddp: $(STAMP)
	$(PY) -m pytest -m ddp -q tests || [ $$? -eq 5 ]

test: lint test-fast test-ddp

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) lightning_logs .pytest_cache
