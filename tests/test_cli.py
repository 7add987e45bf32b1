"""The `dnr` command end to end: train, eval, report, and user errors without tracebacks."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnr.cli import main
from dnr.modelfile import load_model
from dnr.rundir import RunDir
from helpers import tiny_overrides


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    overrides = tiny_overrides(
        train__epochs=3, sparsity__method="dnr", sparsity__density=0.5, model__width=0.125
    )
    # overrides before, between and after the options
    code = main(
        [
            "train",
            overrides[0],
            "--config",
            "demo",
            *overrides[1:4],
            "--out",
            str(out),
            "--quiet",
            *overrides[4:],
        ]
    )
    assert code == 0
    assert RunDir(out).config.is_file()
    assert "width: 0.125" in RunDir(out).config.read_text()
    return out


@pytest.mark.slow
def test_train_writes_run_directory_with_eval(trained_run) -> None:
    from dnr.config import load_config
    from dnr.data import load_dataset
    from dnr.runner import evaluate_loaded

    run = RunDir(trained_run)
    for path in (
        run.config,
        run.metrics,
        run.model_weights,
        run.model_meta,
        run.eval_json,
        run.eval_md,
        run.report_md,
        run.layer_density_plot,
        run.last_checkpoint,
    ):
        assert path.is_file(), path
    document = json.loads(run.eval_json.read_text())
    names = [r["name"] for r in document["results"]]
    assert names == ["clean", "fgsm", "pgd7", "worst_case"]
    assert all("settings" in result for result in document["results"])
    # the evaluation the run wrote is its saved model's, under the run's own settings
    cfg = load_config(run.config)
    again = evaluate_loaded(load_model(run.path), load_dataset(cfg.data), cfg.eval, device="cpu")
    assert again.to_dict()["subset_indices"] == document["subset_indices"]
    assert [(r["name"], r["accuracy"]) for r in again.to_dict()["results"]] == [
        (r["name"], r["accuracy"]) for r in document["results"]
    ]


@pytest.mark.slow
def test_eval_json_reports_ordered_accuracies_and_settings(trained_run, capsys) -> None:
    code = main(["eval", str(trained_run), "--protocol", "dnr", "--subset", "48", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in document["results"]}
    clean = by_name["clean"]["accuracy"]
    fgsm = next(r for n, r in by_name.items() if n.startswith("fgsm"))
    pgd = next(r for n, r in by_name.items() if n.startswith("pgd"))
    assert pgd["accuracy"] <= fgsm["accuracy"] + 1 / 48
    assert fgsm["accuracy"] <= clean + 1e-9
    assert pgd["settings"]["eps"] == pytest.approx(0.031)
    assert pgd["settings"]["steps"] == 7
    assert pgd["settings"]["step_size"] == pytest.approx(0.01)
    assert document["num_examples"] == 48
    assert len(document["subset_indices"]) == 48


@pytest.mark.slow
def test_report_prints_compression(trained_run, capsys) -> None:
    assert main(["report", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "Compression" in out
    assert "features" in out
    assert "x**" in out
    assert "biases, BatchNorm and the input normalization are not prunable" in out


@pytest.mark.slow
def test_eval_plain_state_dict_with_wrapper_prefix(trained_run, tmp_path, capsys) -> None:
    model = load_model(trained_run)
    arch = model.arch_config
    state = {f"module.{k}": v for k, v in model.state_dict().items() if "normalize" not in k}
    torch.save({"state_dict": state}, tmp_path / "weights.pt")
    code = main(
        [
            "eval",
            "--model",
            "vgg16",
            "--num-classes",
            "10",
            "--width",
            str(arch["width"]),
            "--weights",
            str(tmp_path / "weights.pt"),
            "data.name=digits",
            "--subset",
            "32",
            "--json",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert code == 0
    plain = json.loads(capsys.readouterr().out)
    assert (tmp_path / "ev" / "eval.json").is_file()
    main(["eval", str(trained_run), "--subset", "32", "--json", "--out", str(tmp_path / "ev2")])
    ours = json.loads(capsys.readouterr().out)
    assert plain["results"][0]["accuracy"] == ours["results"][0]["accuracy"]
    # --arch: the deprecated name of --model, still accepted; an override may come first
    code = main(
        [
            "eval",
            "data.name=digits",
            "--arch",
            "vgg16",
            "--num-classes",
            "10",
            "--width",
            str(arch["width"]),
            "--weights",
            str(tmp_path / "weights.pt"),
            "--subset",
            "32",
            "--json",
            "--no-sanity",
            "--out",
            str(tmp_path / "ev3"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "--arch is deprecated; use --model" in captured.err
    assert json.loads(captured.out)["results"][0]["accuracy"] == plain["results"][0]["accuracy"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--out", "{tmp}/r", "train.epochz=1"], "unknown key 'train.epochz'"),
        (["train", "--out", "{tmp}/r", "model.name=alexnet"], "choose one of resnet18, vgg16"),
        (["train", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/r"], "config file not found"),
        (
            [
                "train",
                "--out",
                "{tmp}/r",
                "data.name=npz",
                "data.train={tmp}/nope.npz",
                "data.test={tmp}/nope.npz",
            ],
            "nope.npz",
        ),
        (["eval", "{tmp}/no-run"], "no-run"),
        (["train", "--resume", "--out", "{tmp}/r"], "holds no run to resume (no config.yaml)"),
        (["eval", "--weights", "{tmp}/w.pt"], "--weights needs --model and --num-classes"),
        (["eval", "{tmp}/no-run", "--device", "cuda:7"], "device: cuda:7 requested"),
        (["eval", "{tmp}/a", "{tmp}/b"], "give one run directory or model file"),
        (["report", "{tmp}/no-run"], "no-run"),
        (
            ["train", "--out", "{tmp}/r", "sparsity.regrow_pruned=false", "sparsity.density=0.9"],
            "sparsity.regrow_pruned=false needs room",
        ),
        (
            ["train", "--out", "{tmp}/r", "eval.protocol=pgd7"],
            "choose one of autoattack, cw, dnr, full",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, fragment, tmp_path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_existing_run_is_never_overwritten(trained_run, capsys) -> None:
    before = RunDir(trained_run).model_weights.read_bytes()
    assert main(["train", "--out", str(trained_run), *tiny_overrides(train__epochs=1)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert RunDir(trained_run).model_weights.read_bytes() == before


@pytest.mark.slow
def test_npz_training_from_the_command_line(npz_files, tmp_path, capsys) -> None:
    train0, train1, test = npz_files
    out = tmp_path / "npz-run"
    code = main(
        [
            "train",
            "--config",
            "vgg16_cifar10",
            "--out",
            str(out),
            "--quiet",
            "data.name=npz",
            f"data.train=[{train0},{train1}]",
            f"data.test={test}",
            "data.val_size=32",
            "model.width=0.0625",
            "train.epochs=1",
            "train.batch_size=32",
            "attack.steps=1",
            "train.device=cpu",
        ]
    )
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"]["num_classes"] == 4
    assert meta["sparsity"]["method"] == "dnr"


@pytest.mark.slow
def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dnr", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: dnr ")
    for command in ("train", "eval", "report", "demo", "list"):
        assert command in out
    out = subprocess.run(
        [sys.executable, "-m", "dnr", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--resume" in out
    assert "KEY=VALUE" in out
    assert "--print-config" in out


def test_help_reads_names_from_the_registries(capsys) -> None:
    from dnr.config import list_presets
    from dnr.registry import MODELS, PROTOCOLS, SPARSITY_METHODS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    lines = {
        line.split()[0]: line.split(None, 1)[1]
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) > 1
    }
    assert lines["model.name"] == ", ".join(MODELS.names())
    assert lines["sparsity.method"] == ", ".join(SPARSITY_METHODS.names())
    for name in [*SPARSITY_METHODS.names(), *PROTOCOLS.names(), *list_presets()]:
        assert name in out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--model" in out
    assert "--arch" not in out
    for name in [*PROTOCOLS.names(), *MODELS.names()]:
        assert name in out


def test_top_level_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom dnr.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_overrides_and_options_in_any_order(command) -> None:
    from dnr.cli import build_parser

    argv = [command, "data.subset=9", "--quiet", "data.seed=1", "--out", "r", "data.val_size=8"]
    args = build_parser().parse_args(argv)
    words = ([args.target] if getattr(args, "target", None) else []) + args.overrides
    assert words == ["data.subset=9", "data.seed=1", "data.val_size=8"]
    assert str(args.out) == "r"
    assert args.quiet
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--quiet", "data.subset=9", "--bogus"])


def test_print_config_prints_resolved_yaml_without_training(tmp_path, capsys) -> None:
    import yaml

    argv = [
        "train",
        "--config",
        "vgg16_cifar10",
        "--print-config",
        "train.epochs=3",
        "model.width=0.5",
    ]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3
    assert printed["model"]["width"] == 0.5
    assert printed["data"]["name"] == "cifar10"  # from the preset
    assert set(printed) == {"data", "model", "attack", "train", "sparsity", "eval"}
    out = tmp_path / "r"
    assert main(["train", "--print-config", "--out", str(out), "train.epochs=3"]) == 0
    assert not out.exists()
    assert main(["train", "--print-config", "train.epochz=3"]) == 2
    assert "unknown key 'train.epochz'" in capsys.readouterr().err


def test_train_without_out_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "train.epochs=1"])
    assert info.value.code == 2
    assert "required: --out" in capsys.readouterr().err


def test_list_prints_every_registered_name(capsys) -> None:
    from dnr.config import list_presets
    from dnr.registry import (
        DATASETS,
        EXPORT_FORMATS,
        GRANULARITIES,
        LOGGERS,
        MODELS,
        OBJECTIVES,
        OPTIMIZERS,
        PROTOCOLS,
        SPARSITY_METHODS,
    )

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections: dict[str, list[str]] = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            sections[line.rstrip(":")] = []
        else:
            sections[list(sections)[-1]].append(line.split()[0])
    assert sections == {
        "models": MODELS.names(),
        "presets": list_presets(),
        "sparsity-methods": SPARSITY_METHODS.names(),
        "protocols": PROTOCOLS.names(),
        "datasets": DATASETS.names(),
        "granularities": GRANULARITIES.names(),
        "export-formats": EXPORT_FORMATS.names(),
        "loggers": LOGGERS.names(),
        "objectives": OBJECTIVES.names(),
        "optimizers": OPTIMIZERS.names(),
    }
    for argv, names in (
        (["list", "models"], MODELS.names()),
        (["list", "model"], MODELS.names()),
        (["list", "sparsity"], SPARSITY_METHODS.names()),
        (["list", "presets"], list_presets()),
        (["list", "granularity"], ["channel", "weight"]),
        (["list", "export"], ["compact", "onnx", "sparse"]),
        (["list", "loss"], ["hybrid", "mart", "trades"]),
        (["list", "optimizer"], ["adamw", "sgd"]),
    ):
        assert main(argv) == 0
        assert capsys.readouterr().out.splitlines() == names
    with pytest.raises(SystemExit):
        main(["list", "bogus"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--protocol", "bogus"], "invalid choice: 'bogus'"),
        (["--subset", "0"], "must be > 0"),
        (["--batch-size", "-1"], "must be > 0"),
        (["--eps", "abc"], "expected a number"),
        (["--device", "gpu"], "expected auto, cpu, cuda, cuda:N or mps"),
        (["--model", "alexnet"], "invalid choice: 'alexnet'"),
    ],
)
def test_eval_option_errors_exit_2(trained_run, option, fragment, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["eval", str(trained_run), *option])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.slow
def test_eval_request_errors_are_one_line(trained_run, capsys) -> None:
    assert main(["eval", str(trained_run), "--norm", "L2", "--protocol", "dnr"]) == 2
    err = capsys.readouterr().err
    assert "only supported by protocol 'autoattack'" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_eval_records_source_rows_when_data_subset_capped_the_test_set(trained_run) -> None:
    from dataclasses import replace

    from dnr.config import EvalConfig, load_config
    from dnr.data import load_dataset
    from dnr.robustness import select_subset
    from dnr.runner import evaluate_loaded

    cfg = load_config(None, tiny_overrides())  # data.subset caps the 360 digits test images
    capped = load_dataset(cfg.data)
    full = load_dataset(replace(cfg.data, subset=None))
    assert len(capped.test.y) < len(full.test.y)
    options = EvalConfig(subset=16, seed=3, sanity=False)
    report = evaluate_loaded(load_model(trained_run), capped, options, progress=False)
    positions = select_subset(len(capped.test.y), 16, 3)
    assert report.subset_indices is not None
    assert len(report.subset_indices) == 16
    assert torch.equal(full.test.x[report.subset_indices], capped.test.x[positions])
    assert report.subset_indices != positions  # rows of the file, not positions in the split


@pytest.mark.slow
def test_artifacts_have_normal_permissions(trained_run) -> None:
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(RunDir(trained_run).model_weights.stat().st_mode)
    assert mode == 0o666 & ~umask


def _clean(run: Path) -> float:
    return json.loads((run / "eval.json").read_text())["results"][0]["accuracy"]


@pytest.mark.slow
def test_demo_averages_seeds_and_sets_dnr_against_each_row_with_intervals(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out),
        "--quiet",
        "--seeds",
        "0,1",
        *tiny_overrides(train__epochs=1, data__subset=96, eval__subset=32),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    table = printed[: next(i for i, line in enumerate(printed) if line.startswith("dnr minus"))]
    rows = {
        line.split()[0]: line
        for line in table
        if line.split() and line.split()[0] in ("dense", "static", "dnr")
    }
    assert list(rows) == ["dense", "static", "dnr"]
    assert rows["dense"].rstrip().endswith("1.0x")
    assert rows["dnr"].rstrip().endswith("20.0x")
    assert rows["static"].rstrip().endswith("20.0x")
    # each cell: the mean ± s.d. over the seeds of the runs' own evaluations
    dnr = [_clean(out / "dnr" / f"seed{k}") for k in (0, 1)]
    static = [_clean(out / "static" / f"seed{k}") for k in (0, 1)]
    mean_sd = f"{100 * statistics.mean(dnr):.1f} ± {100 * statistics.stdev(dnr):.1f}"
    assert rows["dnr"].split()[1:4] == mean_sd.split()
    # DNR against the control: the paired difference over seeds, with its interval
    versus = next(line for line in printed if line.strip().startswith("dnr - static"))
    paired = statistics.mean(a - b for a, b in zip(dnr, static, strict=True))
    assert f"clean {100 * paired + 0.0:+.1f} [" in versus
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["methods"] == ["dense", "static", "dnr"]
    assert summary["seeds"] == [0, 1]
    assert main(argv) == 0  # a previous demo is replaced, not refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"
