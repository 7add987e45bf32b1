# Two entry points: `make demo` and `make test`. Both create .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# torch: any torch>=2.1. When $(PYTHON) already imports torch (say a CUDA build on a GPU
# machine), the venv sees it (--system-site-packages) and pip keeps it if it satisfies
# $(TORCH); otherwise pip installs $(TORCH) from your index (PIP_INDEX_URL etc. apply).
# Pin only where needed, e.g. `make test TORCH=torch==2.5.1` (.ci/run pins CI's).
TORCH  ?= torch>=2.1

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/dnr demo --out runs/demo

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
