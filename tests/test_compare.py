"""`dnr compare`: one recipe per method, resumable, one table (tiny runs, seconds each)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from conftest import tiny_overrides
from dnr.artifacts import RunDir
from dnr.cli import main
from dnr.compare import comparison_table, run_compare, select_methods
from dnr.config import ConfigError, load_config
from dnr.registry import SPARSITY_METHODS

METHODS = ["dense", "static", "dnr"]


def _overrides(**extra: object) -> list[str]:
    # data.* and sparsity.density come from the YAML file the tests pass as --config
    values: dict[str, object] = {"train__epochs": 2, "data__subset": 96, "eval__sanity": False}
    values.update(extra)
    return [
        o for o in tiny_overrides(**values) if not o.startswith(("data.name=", "sparsity.density="))
    ]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text("data:\n  name: digits\nsparsity:\n  density: 0.1\n")
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, config_file):
    """`dnr compare` of dense, static and dnr; options and overrides intermixed."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    overrides = _overrides()
    argv = [
        "compare",
        *overrides[:2],
        "--config",
        str(config_file),
        "--methods",
        ",".join(METHODS),
        *overrides[2:5],
        "--out",
        str(out),
        "--quiet",
        *overrides[5:],
    ]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return out, stdout.getvalue()


def test_compare_writes_json_md_png_with_one_row_per_method(compared, config_file) -> None:
    out, stdout = compared
    document = json.loads((out / "comparison.json").read_text())
    rows = document["rows"]
    assert [r["method"] for r in rows] == METHODS == document["methods"]
    assert "method" not in document["shared_config"]["sparsity"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["dense"]["granularity"] == "none"
    assert by_method["dense"]["target_density"] == by_method["dense"]["achieved_density"] == 1.0
    for method in ("static", "dnr"):
        assert by_method[method]["granularity"] == "weight"
        assert by_method[method]["target_density"] == 0.1
        assert by_method[method]["achieved_density"] == pytest.approx(0.1, abs=0.005)

    cfg = load_config(config_file, _overrides())
    from dnr.data import load_dataset

    train_images = len(load_dataset(cfg.data).train.y)
    for row in rows:
        run = RunDir(out / row["method"])
        meta = json.loads(run.model_meta.read_text())
        assert meta["sparsity"]["method"] == row["method"]
        assert row["epochs"] == 2 and row["stage_epochs"] == {}
        assert row["images_seen"] == 2 * train_images  # every epoch draws the train split once
        evaluation = json.loads(run.eval_json.read_text())
        attacks = {r["name"]: r["accuracy"] for r in evaluation["results"]}
        assert row["worst_case_accuracy"] == attacks.pop("worst_case")
        assert row["worst_case_accuracy"] == evaluation["worst_case_accuracy"]
        assert row["accuracy"] == attacks and row["clean_accuracy"] == attacks["clean"]
        assert list(row["accuracy"]) == ["clean", "fgsm", "pgd7"]

    markdown = (out / "comparison.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(METHODS)  # header, rule, one row per method
    assert table[0].split("|")[1:-1] == [
        f" {h} "
        for h in (
            "method",
            "granularity",
            "target density",
            "achieved density",
            "epochs",
            "images seen",
            "clean",
            "fgsm",
            "pgd7",
            "worst case",
        )
    ]
    for line, method in zip(table[2:], METHODS):
        assert line.startswith(f"| {method} |")
    assert comparison_table(out, METHODS)[1] in markdown
    assert markdown in stdout  # the table is printed at the end
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_invocation_reuses_finished_runs(compared, config_file) -> None:
    out, _ = compared
    weights = {m: RunDir(out / m).model_weights for m in METHODS}
    before = {m: path.stat().st_mtime_ns for m, path in weights.items()}
    rows_before = json.loads((out / "comparison.json").read_text())["rows"]
    lines: list[str] = []
    path = run_compare(config_file, out, METHODS, _overrides(), progress=False, log=lines.append)
    assert path == out / "comparison.md"
    assert {m: p.stat().st_mtime_ns for m, p in weights.items()} == before  # nothing retrained
    assert lines == [
        f"[{i}/3] {m}: reusing the finished run in {out / m} (eval.json)"
        for i, m in enumerate(METHODS, 1)
    ]
    assert json.loads((out / "comparison.json").read_text())["rows"] == rows_before


def test_a_run_with_another_config_is_refused_naming_the_method(compared, config_file) -> None:
    out, _ = compared
    before = (out / "comparison.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"^dense: .*differs in train\.epochs"):
        run_compare(config_file, out, ["dense"], _overrides(train__epochs=3), log=print)
    assert (out / "comparison.json").stat().st_mtime_ns == before


def test_interrupted_comparison_resumes_the_interrupted_run(tmp_path, config_file) -> None:
    out = tmp_path / "cmp"
    lines: list[str] = []

    def interrupt_in_static(message: str) -> None:
        lines.append(message)
        if message.startswith("epoch 1/2") and "[2/2] static: training" in "\n".join(lines):
            raise KeyboardInterrupt  # after static's first epoch was checkpointed

    methods = ["dense", "static"]
    with pytest.raises(KeyboardInterrupt):
        run_compare(config_file, out, methods, _overrides(), log=interrupt_in_static)
    assert RunDir(out / "static").last_checkpoint.is_file()
    assert not RunDir(out / "static").eval_json.exists()
    assert not (out / "comparison.json").exists()
    dense_weights = RunDir(out / "dense").model_weights.stat().st_mtime_ns

    lines.clear()
    run_compare(config_file, out, methods, _overrides(), progress=False, log=lines.append)
    assert lines[0].startswith("[1/2] dense: reusing")
    assert lines[1].startswith("[2/2] static: resuming")
    assert any(line.startswith("resuming") and "epoch 2/2" in line for line in lines)
    assert RunDir(out / "dense").model_weights.stat().st_mtime_ns == dense_weights
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows] == methods
    assert rows[1]["epochs"] == 2  # the replayed epoch is counted once


def test_unknown_method_fails_before_anything_is_written(tmp_path, config_file, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(config_file), "--out", str(out), "--quiet"]
    assert main([*argv, "--methods", "dense,bogus,dnr", *_overrides()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bogus'" in err and "choose from" in err
    assert not out.exists()
    # a user override of sparsity.method would be silently replaced: refused as well
    assert main([*argv, "--methods", "dense", *_overrides(), "sparsity.method=dnr"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main([*argv, "--methods", ",", *_overrides()]) == 2
    assert not out.exists()


def test_a_foreign_directory_is_refused_before_training(tmp_path, config_file) -> None:
    out = tmp_path / "cmp"
    (out / "static").mkdir(parents=True)
    (out / "static" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"^static: .*not a run directory"):
        run_compare(config_file, out, ["dense", "static"], _overrides(), log=print)
    assert sorted(p.name for p in out.iterdir()) == ["static"]  # dense did not train


def test_select_methods_deduplicates_and_defaults_to_every_registered_one() -> None:
    notes: list[str] = []
    assert select_methods(["dnr", "DNR", " dense", "dnr"], notes.append) == ["dnr", "dense"]
    assert notes == ["note: sparsity method dnr is named twice; it runs once"] * 2
    assert select_methods(None) == SPARSITY_METHODS.names()
    with pytest.raises(ConfigError, match="no sparsity methods"):
        select_methods([""])
