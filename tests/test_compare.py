"""`dnr compare`: one recipe per method, resumable, one table (tiny runs, seconds each)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import pytest

from dnr.cli import main
from dnr.compare import (
    comparison_document,
    comparison_table,
    parse_seeds,
    run_compare,
    seed_statistics,
    select_methods,
)
from dnr.config import ConfigError, load_config
from dnr.registry import SPARSITY_METHODS
from dnr.rundir import RunDir
from helpers import tiny_overrides

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


@pytest.mark.slow
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
        assert row["epochs"] == 2
        assert row["stage_epochs"] == {}
        assert row["images_seen"] == 2 * train_images  # every epoch draws the train split once
        evaluation = json.loads(run.eval_json.read_text())
        attacks = {r["name"]: r["accuracy"] for r in evaluation["results"]}
        assert row["worst_case_accuracy"] == attacks.pop("worst_case")
        assert row["worst_case_accuracy"] == evaluation["worst_case_accuracy"]
        assert row["accuracy"] == attacks
        assert row["clean_accuracy"] == attacks["clean"]
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
    assert "One seed (train.seed 0): no interval can be given" in markdown
    assert document["seeds"] == [0]
    assert document["layout"] == "OUT/<method>/"
    assert "differences" not in document
    assert all(r["seed"] == 0 for r in rows)
    assert markdown in stdout  # the table is printed at the end
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_run_with_another_config_is_refused_naming_the_method(compared, config_file) -> None:
    out, _ = compared
    before = (out / "comparison.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"^dense: .*differs in train\.epochs"):
        run_compare(config_file, out, ["dense"], _overrides(train__epochs=3), log=print)
    assert (out / "comparison.json").stat().st_mtime_ns == before


@pytest.mark.slow
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
    assert err.count("\n") == 1
    assert "'bogus'" in err
    assert "choose from" in err
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


# --------------------------------------------------------------------------- seeds


SEED_METHODS = ["static", "dnr"]


def _seeded_overrides() -> list[str]:
    return _overrides(train__epochs=1, data__subset=64, eval__subset=32)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, config_file):
    """static and dnr, seeds 0 and 1, and dnr again with seeds 1000 and 1001."""
    out = tmp_path_factory.mktemp("seeded") / "cmp"
    argv = ["compare", "--config", str(config_file), "--out", str(out), "--quiet"]
    argv += ["--methods", ",".join(SEED_METHODS), "--seeds", "0,1", "--noise-floor"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, *_seeded_overrides()]) == 0
    return out


def _t_half_width_of_two(d0: float, d1: float) -> float:
    # n = 2: sd = |d0 - d1| / sqrt(2), half width = t(0.975, 1) * sd / sqrt(2)
    return 12.7062 * abs(d0 - d1) / 2


@pytest.mark.slow
def test_seeds_train_every_method_per_seed_and_pair_them(seeded) -> None:
    out = seeded
    for method, seed in [(m, k) for m in SEED_METHODS for k in (0, 1)] + [
        ("dnr", 1000),
        ("dnr", 1001),
    ]:
        run = RunDir(out / method / f"seed{seed}")
        assert run.eval_json.is_file()
        assert f"seed: {seed}" in run.config.read_text()
    assert not (out / "static" / "seed1000").exists()  # only the reference runs again
    document = json.loads((out / "comparison.json").read_text())
    assert document["seeds"] == [0, 1]
    assert document["reference"] == "dnr"
    assert document["noise_floor_seeds"] == [1000, 1001]
    assert "seed" not in document["shared_config"]["train"]
    rows = {(r["method"], r["seed"]): r for r in document["rows"]}
    assert sorted(rows) == [("dnr", 0), ("dnr", 1), ("static", 0), ("static", 1)]
    for (method, seed), row in rows.items():  # the raw figures are each run's eval.json
        evaluation = json.loads(RunDir(out / method / f"seed{seed}").eval_json.read_text())
        assert row["worst_case_accuracy"] == evaluation["worst_case_accuracy"]
    assert document["metrics"] == ["clean", "fgsm", "pgd7", "worst_case"]

    def figure(method: str, seed: int, metric: str) -> float:
        row = rows[method, seed]
        return row["worst_case_accuracy"] if metric == "worst_case" else row["accuracy"][metric]

    differences = document["differences"]
    # static − dnr against the reference, then dnr − static against static: 2 × 4 metrics
    assert [(e["a"], e["b"], e["against"]) for e in differences] == [
        ("static", "dnr", "reference")
    ] * 4 + [("dnr", "static", "static")] * 4
    for entry in differences:
        a, b, metric = entry["a"], entry["b"], entry["metric"]
        d = [figure(a, k, metric) - figure(b, k, metric) for k in (0, 1)]
        assert entry["n"] == 2
        assert entry["seeds"] == [0, 1]
        assert entry["mean"] == pytest.approx((d[0] + d[1]) / 2)
        half = _t_half_width_of_two(*d)
        assert entry["half_width"] == pytest.approx(half, rel=1e-4, abs=1e-12)
        assert (entry["lo"], entry["hi"]) == pytest.approx(
            (entry["mean"] - half, entry["mean"] + half), rel=1e-4, abs=1e-12
        )
        assert entry["verdict"] in (f"{a} ahead", f"{b} ahead", "no difference shown")
        assert (entry["verdict"] == "no difference shown") == (entry["lo"] <= 0 <= entry["hi"])
    noise = document["noise_floor"]
    assert [e["metric"] for e in noise] == document["metrics"]
    noise_rows = {r["seed"]: r for r in document["noise_floor_rows"]}
    for entry in noise:
        assert entry["n"] == 2
        assert entry["b"] == "dnr"
        assert entry["against"] == "itself"
        metric = entry["metric"]
        d = [
            (
                noise_rows[k + 1000]["worst_case_accuracy"]
                if metric == "worst_case"
                else noise_rows[k + 1000]["accuracy"][metric]
            )
            - figure("dnr", k, metric)
            for k in (0, 1)
        ]
        assert entry["mean"] == pytest.approx((d[0] + d[1]) / 2)
    summary = {s["method"]: s for s in document["summary"]}
    clean = [rows["static", k]["clean_accuracy"] for k in (0, 1)]
    assert summary["static"]["metrics"]["clean"]["mean"] == pytest.approx(sum(clean) / 2)
    assert summary["static"]["metrics"]["clean"]["sd"] == pytest.approx(
        abs(clean[0] - clean[1]) / math.sqrt(2)
    )

    markdown = (out / "comparison.md").read_text()
    assert "# Comparison: static, dnr (seeds 0, 1)" in markdown
    assert "## Paired differences against dnr" in markdown
    assert "## Paired differences against static" in markdown
    assert "## Noise floor: dnr against itself" in markdown
    pair_lines = [line for line in markdown.splitlines() if line.startswith("| static − dnr |")]
    assert len(pair_lines) == 4
    assert all(line.count("|") == 8 for line in pair_lines)
    assert pair_lines[0].split("|")[3].strip() == "2"  # n, the seeds paired
    assert "noise floor ± (pp)" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_seeded_resume_retrains_only_the_run_without_eval_json(seeded, config_file) -> None:
    out = seeded
    runs = [RunDir(out / m / f"seed{k}") for m in SEED_METHODS for k in (0, 1)]
    runs += [RunDir(out / "dnr" / f"seed{k}") for k in (1000, 1001)]
    before = {run.path: run.model_weights.stat().st_mtime_ns for run in runs}
    RunDir(out / "static" / "seed1").eval_json.unlink()
    lines: list[str] = []
    run_compare(
        config_file,
        out,
        SEED_METHODS,
        _seeded_overrides(),
        seeds=[0, 1],
        noise_floor=True,
        progress=False,
        log=lines.append,
    )
    plan = [line for line in lines if line.startswith("[")]
    seed0 = out / "static" / "seed0"
    assert plan[0] == f"[1/6] static seed 0: reusing the finished run in {seed0} (eval.json)"
    assert plan[2].startswith("[3/6] static seed 1: resuming")
    assert sum("reusing" in line for line in plan) == 5
    assert len(plan) == 6
    for run in runs:
        changed = run.model_weights.stat().st_mtime_ns != before[run.path]
        assert changed == (run.path == out / "static" / "seed1"), run.path
    assert RunDir(out / "static" / "seed1").eval_json.is_file()
    document = json.loads((out / "comparison.json").read_text())
    assert all(e["n"] == 2 for e in document["differences"])


def _set_figures(run: RunDir, clean: float, worst: float) -> None:
    """Give a finished run known accuracies (every attack = clean) in its eval.json."""
    evaluation = json.loads(run.eval_json.read_text())
    for result in evaluation["results"]:
        result["accuracy"] = worst if result["name"] == "worst_case" else clean
    evaluation["worst_case_accuracy"] = worst
    run.eval_json.write_text(json.dumps(evaluation))


@pytest.mark.slow
def test_seeded_table_of_known_figures(seeded, config_file, tmp_path) -> None:
    """Known per-seed figures in, known paired intervals and verdicts out (reused runs)."""
    out = tmp_path / "cmp"
    shutil.copytree(seeded, out)
    figures = {  # (method, seed): (clean, worst case)
        ("static", 0): (0.50, 0.20),
        ("static", 1): (0.40, 0.22),
        ("dnr", 0): (0.53, 0.30),
        ("dnr", 1): (0.45, 0.32),
        ("dnr", 1000): (0.50, 0.30),
        ("dnr", 1001): (0.47, 0.32),
    }
    for (method, seed), (clean, worst) in figures.items():
        _set_figures(RunDir(out / method / f"seed{seed}"), clean, worst)
    lines: list[str] = []
    run_compare(
        config_file,
        out,
        SEED_METHODS,
        _seeded_overrides(),
        seeds=[0, 1],
        noise_floor=True,
        log=lines.append,
    )
    assert sum("reusing" in line for line in lines) == 6  # nothing trained
    document = json.loads((out / "comparison.json").read_text())
    by_pair = {(e["a"], e["b"], e["metric"]): e for e in document["differences"]}
    # dnr − static clean: +0.03, +0.05 → mean 0.04, sd 0.01414, half 12.7062·0.01/1 = 0.127
    clean = by_pair["dnr", "static", "clean"]
    assert clean["mean"] == pytest.approx(0.04)
    assert clean["half_width"] == pytest.approx(0.127062, abs=1e-5)
    assert (clean["lo"], clean["hi"]) == pytest.approx((-0.087062, 0.167062), abs=1e-5)
    assert clean["verdict"] == "no difference shown"
    assert clean["n"] == 2
    assert by_pair["dnr", "static", "pgd7"]["mean"] == pytest.approx(0.04)
    # worst case: +0.10 on both seeds → a zero-width interval, which shows nothing
    assert by_pair["dnr", "static", "worst_case"]["verdict"] == "no difference shown"
    assert by_pair["dnr", "static", "worst_case"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert by_pair["static", "dnr", "clean"]["mean"] == pytest.approx(-0.04)
    # the noise floor: dnr(seed + 1000) − dnr(seed) clean: −0.03, +0.02
    floor = {e["metric"]: e for e in document["noise_floor"]}
    assert floor["clean"]["mean"] == pytest.approx(-0.005)
    assert floor["clean"]["half_width"] == pytest.approx(12.7062 * 0.025, abs=1e-4)
    assert floor["worst_case"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    summary = {s["method"]: s["metrics"] for s in document["summary"]}
    assert summary["dnr"]["clean"]["mean"] == pytest.approx(0.49)  # noise runs not mixed in
    markdown = (out / "comparison.md").read_text()
    assert (
        "| dnr − static | clean | 2 | +4.00 | [-8.71, +16.71] | no difference shown | ±31.77 |"
        in (markdown)
    )
    assert (
        "| dnr − static | worst case | 2 | +10.00 | [+10.00, +10.00] | no difference shown "
        "| ±0.00 |" in (markdown)
    )
    assert "| dnr | 2 | 49.00% ± 5.66 |" in markdown


@pytest.mark.slow
def test_single_seed_layout_and_per_seed_layout_do_not_mix(seeded, config_file) -> None:
    out = seeded
    with pytest.raises(ConfigError, match=r"^static: .*holds per-seed runs"):
        run_compare(config_file, out, SEED_METHODS, _seeded_overrides(), log=print)
    flat = out.parent / "flat"
    (flat / "dnr").mkdir(parents=True)
    (flat / "dnr" / "config.yaml").write_text("train: {}\n")
    with pytest.raises(ConfigError, match=r"^dnr: .*holds a single-seed run"):
        run_compare(config_file, flat, ["dnr"], _seeded_overrides(), seeds=[0, 1], log=print)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0,x"], "'x' is not an integer"),
        (["--seeds", "0,1,0"], "seed 0 given twice"),
        (["--seeds=-1"], "non-negative integer, got -1"),
        (["--seeds", ","], "no seeds"),
        (["--seeds", "0,1", "train.seed=3"], "drop train.seed="),
        (["--reference", "lwm"], "--reference lwm: not among the compared methods"),
        (["--seeds", "0,1000", "--noise-floor"], "seeds + 1000"),
    ],
)
def test_bad_seed_options_are_one_line_errors(tmp_path, config_file, capsys, argv, message):
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(config_file), "--out", str(out), "--quiet"]
    assert main([*args, "--methods", "static,dnr", *argv, *_seeded_overrides()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("dnr compare: error: ")
    assert message in err
    assert not out.exists()


def test_parse_seeds_keeps_the_order() -> None:
    assert parse_seeds("2, 0,1") == [2, 0, 1]
    with pytest.raises(ConfigError, match="given twice"):
        parse_seeds("1,1")


def _row(method: str, seed: int, clean: float, worst: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "accuracy": {"clean": clean},
        "worst_case_accuracy": worst,
    }


def test_seed_statistics_pairs_by_seed_with_known_numbers() -> None:
    # dnr − static per seed: clean 0.01, 0.02, 0.03 (mean 0.02, half width 0.02484)
    rows = [
        _row("static", 0, 0.50, 0.20),
        _row("static", 1, 0.40, 0.25),
        _row("static", 2, 0.60, 0.30),
        _row("dnr", 2, 0.63, 0.40),  # out of order: paired by seed, not by position
        _row("dnr", 0, 0.51, 0.30),
        _row("dnr", 1, 0.42, 0.35),
    ]
    stats = seed_statistics(rows, ["static", "dnr"], "dnr")
    assert stats["metrics"] == ["clean", "worst_case"]
    by_pair = {(e["a"], e["b"], e["metric"]): e for e in stats["differences"]}
    clean = by_pair["dnr", "static", "clean"]
    assert clean["n"] == 3
    assert clean["mean"] == pytest.approx(0.02)
    assert clean["half_width"] == pytest.approx(4.3027 * 0.01 / math.sqrt(3), abs=1e-6)
    assert clean["verdict"] == "no difference shown"
    worst = by_pair["dnr", "static", "worst_case"]  # +0.10 every seed: sd 0, interval [0.1, 0.1]
    assert worst["mean"] == pytest.approx(0.10)
    assert worst["verdict"] == "no difference shown"
    assert by_pair["static", "dnr", "clean"]["mean"] == pytest.approx(-0.02)
    assert stats["noise_floor"] is None


def test_one_seed_with_a_noise_floor_says_no_interval_can_be_given() -> None:
    rows = [_row("static", 0, 0.50, 0.20), _row("dnr", 0, 0.55, 0.25)]
    for row in rows:
        row.update(protocol="dnr", num_test_examples=64)
    stats = seed_statistics(rows, ["static", "dnr"], "dnr", [_row("dnr", 1000, 0.52, 0.24)])
    assert all(e["n"] == 1 and e["lo"] is None for e in stats["differences"])
    assert all(e["verdict"] == "no difference shown" for e in stats["differences"])
    assert stats["noise_floor"][0]["mean"] == pytest.approx(-0.03)
    markdown = comparison_document(rows, "TABLE", stats, [0])
    assert markdown.startswith("# Comparison: static, dnr (seed 0)")
    assert "| static − dnr | clean | 1 | -5.00 | none (n = 1) | no difference shown | - |" in (
        markdown
    )
    assert "One seed: no interval can be given" in markdown
