# Two commands do all the set-up on a fresh machine:
#   make demo   trains vanilla and EnD on Biased MNIST (a few minutes) and writes a table and a PNG
#   make test   runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# Every command finds MNIST the same way (src/endebias/data/mnist.py): --data-dir, then
# $ENDEBIAS_DATA, then the user cache ~/.cache/endebias, downloading there when online.
# The Makefile passes no data folder of its own. On an offline machine with a copy beside
# the checkout, `make data` links that copy into the cache once, so that `make demo` and a
# later `endebias train` find the same files.
CACHE := $(HOME)/.cache/endebias
LOCAL_MNIST := $(wildcard $(abspath ..)/shared/data/mnist)

.PHONY: demo data test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

data:
	@if [ -z "$$ENDEBIAS_DATA" ] && [ -n "$(LOCAL_MNIST)" ] && [ ! -e "$(CACHE)/mnist" ] \
	    && [ ! -L "$(CACHE)/mnist" ]; then \
	    mkdir -p "$(CACHE)" && ln -s "$(LOCAL_MNIST)" "$(CACHE)/mnist" \
	    && echo "linked $(CACHE)/mnist -> $(LOCAL_MNIST)"; fi

# DEMO_ARGS go to `endebias demo`: `make demo DEMO_ARGS=--full` trains the quick preset as it
# stands (twice the demo budget's training steps, five times its evaluation).
DEMO_ARGS ?=
demo: $(VENV)/.installed data
	$(VENV)/bin/endebias demo --out demo-output $(DEMO_ARGS)
	@echo "endebias is installed in $(VENV)/bin: 'source $(VENV)/bin/activate' puts it on PATH"

test: $(VENV)/.installed
	$(PY) -m pytest -q

# lint-imports checks the layer contracts of pyproject.toml ([tool.importlinter]) on this
# checkout's src/ (docs/design.md, "Architecture").
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	PYTHONPATH=src $(VENV)/bin/lint-imports --no-logo

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_regularizer.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .import_linter_cache .grimp_cache
