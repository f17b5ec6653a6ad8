# Quick start:  make run   (the bundled example, end to end)
#               make test  (the test suite)
# Both create .venv on first use; torch is pinned by constraints.txt to the
# CPU wheel the machine ships, so pip never pulls CUDA packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow bench setup clean
setup: $(VENV)/.done

$(VENV)/.done: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[test,arviz]'
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || \
	  echo "note: graphviz 'dot' not installed; svg/png graph tests will be skipped"; }
	touch $@

run: setup
	$(BIN)/csis-dsl run specs/gaussian.ppl --obs x1=8 --obs x2=9

test: setup
	$(BIN)/python -m pytest -n auto

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python bench/bench_frontend.py
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_real.py
	$(BIN)/python bench/bench_plates.py

clean:
	rm -rf $(VENV) build *.egg-info
