# Two entry points: `make demo` and `make test`. Both create .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The dev/CI machines carry a CPU build of torch 2.13.0 locally; any torch>=2.1 works,
# e.g. `make TORCH=torch test` to take whatever your index serves.
TORCH  ?= torch==2.13.0

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/dnr demo --out runs/demo

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
