# Two entry points: `make demo` and `make test`. Both create .venv from nothing.
# `make test-fast`: the tests not marked slow (no end-to-end training), under a minute
# on one core; `make test` (what CI runs) runs every test, with the linters and mypy.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# torch: any torch>=2.1. When $(PYTHON) already imports torch (say a CUDA build on a GPU
# machine), the venv sees it (--system-site-packages) and pip keeps it if it satisfies
# $(TORCH); otherwise pip installs $(TORCH) from your index (PIP_INDEX_URL etc. apply).
# Pin only where needed, e.g. `make test TORCH=torch==2.5.1` (.ci/run pins CI's).
TORCH  ?= torch>=2.1
# mypy's verdict on calls into torch depends on torch's own type hints, which change between
# releases. On the torch versions CI checks (TYPED_TORCH) mypy must pass; on any other torch
# it still runs, but its findings do not fail `make test`. CI sets TYPECHECK=strict.
TYPED_TORCH ?= 2.13.0 2.14.1
TYPECHECK   ?= auto

.PHONY: demo test test-fast typecheck venv clean

$(VENV)/.installed: pyproject.toml
	if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	# every later install keeps the torch just chosen (a torchvision or timm would otherwise
	# pull the newest torch over a user's own build)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-pin.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-pin.txt -e ".[test]"
	# torchvision and timm (the `models` extra) only where a build for this torch imports: the
	# index's torchvision wheels link CUDA torch, so a local CPU-only torch build has none, and
	# the tests that need them then say so and skip (CI's newest-torch leg runs them)
	$(PY) -m pip install --quiet -c $(VENV)/torch-pin.txt -e ".[models]" \
		&& $(PY) -c "import torchvision, timm" 2>/dev/null \
		|| { echo "note: no torchvision build imports with this torch; its tests will skip"; \
			$(PY) -m pip uninstall --quiet -y torchvision timm; }
	$(PY) -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/dnr demo --out runs/demo

typecheck: venv
	@v=$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])"); \
	if [ "$(TYPECHECK)" = strict ] || echo " $(TYPED_TORCH) " | grep -q " $$v "; then \
		$(VENV)/bin/mypy; \
	else \
		$(VENV)/bin/mypy || echo "note: torch $$v is not among the type-checked versions" \
			"($(TYPED_TORCH)); mypy's findings above do not fail make test"; \
	fi

test: venv typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .venv-newest runs .pytest_cache
