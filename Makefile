# Two commands do all the set-up on a fresh machine:
#   make demo   trains vanilla and EnD on Biased MNIST (quick preset) and writes a table and a PNG
#   make test   runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# MNIST: ENDEBIAS_DATA if set, else the copy beside the checkout, else ~/.cache/endebias.
DATA ?= $(or $(ENDEBIAS_DATA),$(wildcard ../shared/data/mnist))
DATA_ARG := $(if $(DATA),--data-dir $(DATA),)

.PHONY: demo test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) -m endebias demo $(DATA_ARG) --out demo-output

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_regularizer.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
