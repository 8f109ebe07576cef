# Two commands matter: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU machines: the exact pin takes the CPU wheel that lies on disk (an unpinned torch pulls a
# multi-GB CUDA build). GPU users install their own torch; setup.cfg only asks for a range.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,lmeval]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/landscape demo --out runs/demo

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	-$(PY) -m pip install -q pyhessian loss-landscapes  # optional comparison columns; the bench runs without them
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs build *.egg-info
