"""The benchmark scripts stay importable, documented and runnable only on purpose.

Every script in ``benchmarks/`` is imported by path (as ``python benchmarks/x.py`` would
find it, with ``benchmarks/`` on ``sys.path`` for ``benchlib``): importing one must run
nothing, and each must say what it measures (a module docstring) and have a ``main``.
The throughput report's table and pass-counting rule are checked on fixed inputs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dnr.config import load_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


@pytest.fixture
def benchlib_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/`` first on ``sys.path``, as when a script is run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def import_script(path: Path) -> ModuleType:
    """The script at ``path`` as a module named ``benchmark_<stem>`` (not ``__main__``)."""
    name = f"benchmark_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_the_scripts_are_found() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"train_throughput", "dnr_vs_controls", "data_throughput"} <= names


@pytest.mark.usefixtures("benchlib_path")
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_without_running(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = import_script(path)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert module.__doc__, f"{path.name} has no module docstring"
    assert module.__doc__.strip().splitlines()[0], f"{path.name}: empty first docstring line"
    assert capsys.readouterr().out == "", f"importing {path.name} printed something"


@pytest.mark.usefixtures("benchlib_path")
def test_throughput_table_renders_exactly() -> None:
    from benchlib.throughput.render import reference_section, throughput_section

    rows = [
        {
            "model": "vgg16",
            "batch_size": 8,
            "method": "dnr",
            "mode": "pgd",
            "images_per_sec": 123.456,
            "spread": 0.0125,
            "cost_vs_dense_same_mode": 1.034,
            "recipe_epoch_cost_vs_pgd": None,
        }
    ]
    lines = throughput_section(rows)
    assert lines[:3] == ["", "## Throughput", ""]
    assert lines[-1] == (
        "| model | batch | method | mode | images/s | ± | × dense | recipe epoch × PGD |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| vgg16 | 8 | DNR irregular d=0.05 | pgd | 123.5 | 1.2 % | 1.03 | - |"
    )
    assert reference_section([], workers=2) == []  # no reference measured: no section


@pytest.mark.usefixtures("benchlib_path")
@pytest.mark.parametrize(
    ("overrides", "conventional", "needed"),
    [
        (["attack.train_mode=pgd", "attack.steps=7"], 27.0, 20.0),  # 3k + 6, 2k + 6
        (["attack.train_mode=fgsm_rs"], 9.0, 8.0),  # k = 1
        (["attack.train_mode=free", "attack.replays=4"], 24.0, 24.0),  # 6m by both rules
        (["attack.train_mode=pgd", "train.beta=1.0"], 3.0, 3.0),  # clean training
        (["attack.train_mode=pgd", "attack.steps=0"], 6.0, 6.0),  # no attack: the update
    ],
)
def test_forward_passes_follow_the_training_mode(
    overrides: list[str], conventional: float, needed: float
) -> None:
    from benchlib.throughput.passes import forward_passes

    passes = forward_passes(load_config(None, overrides))
    assert passes == {"conventional": conventional, "needed": needed}
