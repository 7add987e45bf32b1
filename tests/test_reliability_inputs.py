"""Hostile inputs end at the command line with exit code 2 and one line naming the problem
(never a traceback; ``--debug`` shows it), and ``--overwrite`` replaces only a run's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from dnr.cli import main
from dnr.models import register_model
from dnr.models.layers import Normalize
from dnr.registry import MODELS
from dnr.rundir import RunDir
from helpers import WNIDS, images, make_tiny, metrics, save_npz, tiny_overrides

#: Kept small in case an input is wrongly accepted: then it trains for seconds, not hours.
SMALL = ["train.device=cpu", "train.epochs=1", "model.width=0.0625", "attack.steps=1", "--no-eval"]


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("sparsity.density=1.5", ["sparsity.density", "(0, 1]"]),
        ("sparsity.density=0", ["sparsity.density", "(0, 1]"]),
        ("train.beta=-0.1", ["train.beta", "[0, 1]"]),
        ("train.beta=1.5", ["train.beta", "[0, 1]"]),
        ("attack.eps=-1", ["attack.eps", "[0, 1]"]),
        ("train.epochs=0", ["train.epochs", ">= 1"]),
        ("train.epochs=-3", ["train.epochs", ">= 1"]),
        ("train.epochs=two", ["train.epochs", "expected an integer"]),
        ("train.epochs=2.5", ["train.epochs", "expected an integer"]),
        ("train.lr=fast", ["train.lr", "expected a number"]),
        ("train.lr=.nan", ["train.lr", "finite"]),
        ("attack.step_size=.inf", ["attack.step_size", "finite"]),
        ("train.bf16=maybe", ["train.bf16", "true or false"]),
        ("train.seed=-1", ["train.seed", "[0, 2**63)"]),
        ("data.subset=abc", ["data.subset", "expected an integer"]),
        ("train.epochs=99999999999999999999999", ["train.epochs", "64-bit"]),
        ("train.epochs=2024-13-45", ["train.epochs", "cannot parse value"]),
        ("train.epocs=2", ["unknown key 'train.epocs'", "did you mean 'train.epochs'"]),
        ("trian.epochs=2", ["unknown key 'trian.epochs'", "did you mean 'train.epochs'"]),
        ("sparsity.densty=0.1", ["did you mean 'sparsity.density'"]),
        ("train.density=0.1", ["did you mean 'sparsity.density'"]),
        ("epochs=2", ["unknown key 'epochs'", "did you mean 'train.epochs'"]),
        ("train=5", ["train: expected a mapping", "train.epochs=..."]),
        ("model.name=vgg61", ["model.name", "did you mean 'vgg16'", "resnet18, vgg16"]),
        ("sparsity.method=dnx", ["sparsity.method", "did you mean 'dnr'"]),
        ("sparsity.granularity=channels", ["did you mean 'channel'"]),
        ("model.kwargs={chanels: [8]}", ["model.kwargs.chanels", "did you mean 'channels'"]),
        ("model.kwargs={num_classes: 3}", ["model.kwargs.num_classes", "set by the dataset"]),
        (
            "sparsity.options={lwm: {pretrain_epoch: 1}}",
            ["sparsity.options.lwm", "did you mean 'pretrain_epochs'"],
        ),
        ("sparsity.options={admm: {rho: .nan}}", ["sparsity.options.admm.rho", "finite"]),
        ("train.warmup_epochs=9", ["train.warmup_epochs"]),
        ("train.device=gpu", ["train.device", "cuda:N"]),
    ],
)
def test_hostile_overrides_exit_2_naming_the_key(tmp_path, capsys, override, fragments) -> None:
    # on top of a tiny run: an override wrongly accepted trains for seconds, not hours
    argv = ["train", "--out", str(tmp_path / "r"), "--quiet", "--no-eval", *tiny_overrides()]
    code, err = _run_cli([*argv, override], capsys)
    _assert_user_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_hostile_config_files_exit_2(tmp_path, capsys) -> None:
    cases = {
        "train: 5\n": ["train: expected a mapping"],
        "train:\n  epocs: 3\n": ["unknown key 'train.epocs'", "did you mean 'train.epochs'"],
        "sparsity:\n  density: [0.1]\n": ["sparsity.density", "expected a number"],
        "- a\n- list\n": ["expected a mapping of sections"],
        "train: {epochs: 3\n": ["not valid YAML"],
        "train:\n  epochs: !!python/object/apply:os.system [echo hi]\n": ["not valid YAML"],
    }
    for i, (text, fragments) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text)
        argv = ["train", "--config", str(path), "--out", str(tmp_path / "r"), "--no-eval"]
        code, err = _run_cli([*argv, *tiny_overrides()], capsys)
        _assert_user_error(code, err, str(path) if "YAML" in fragments[0] else "", *fragments)


@pytest.fixture
def conv_free_model():
    """A registered model without convolutions (nothing registered today is one)."""

    @register_model(name="toy_mlp")
    def toy_mlp(num_classes, input_size=32, width=1.0, mean=(0, 0, 0), std=(1, 1, 1)):
        del width
        return nn.Sequential(
            Normalize(mean, std),
            nn.Flatten(),
            nn.Linear(3 * input_size * input_size, 16),
            nn.ReLU(),
            nn.Linear(16, num_classes),
        )

    yield "toy_mlp"
    MODELS.unregister("toy_mlp")


def test_channel_granularity_on_a_model_without_convolutions(
    tmp_path, capsys, conv_free_model
) -> None:
    overrides = tiny_overrides(
        model__name=conv_free_model,
        sparsity__method="dnr",
        sparsity__granularity="channel",
        sparsity__density=0.5,
    )
    code, err = _run_cli(["train", "--out", str(tmp_path / "r"), "--quiet", *overrides], capsys)
    _assert_user_error(code, err, "toy_mlp", "channel")


def test_an_input_size_the_architecture_does_not_support(tmp_path, capsys) -> None:
    for name in ("train", "test"):
        save_npz(tmp_path / f"{name}.npz", x=images(8, size=16), y=np.arange(8) % 2)
    overrides = [
        "data.name=npz",
        f"data.train={tmp_path / 'train.npz'}",
        f"data.test={tmp_path / 'test.npz'}",
        "data.val_size=0",
        *SMALL,
    ]
    code, err = _run_cli(["train", "--out", str(tmp_path / "r"), "--quiet", *overrides], capsys)
    _assert_user_error(code, err, "model.name=vgg16", "input_size", "16")


def test_an_out_that_is_a_file_or_inside_one(tmp_path, capsys) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    overrides = tiny_overrides(train__epochs=1)
    code, err = _run_cli(["train", "--out", str(afile), "--quiet", *overrides], capsys)
    _assert_user_error(code, err, str(afile), "is a file")
    code, err = _run_cli(["train", "--out", str(afile / "run"), "--quiet", *overrides], capsys)
    _assert_user_error(code, err, str(afile))
    assert afile.read_text() == "mine"


# --------------------------------------------------------------------------- data


def _npz_overrides(train: Path, test: Path) -> list[str]:
    return [
        "data.name=npz",
        f"data.train={train}",
        f"data.test={test}",
        "data.val_size=0",
        *SMALL,
    ]


NPZ_CASES = {
    "missing file": (None, ["missing.npz", "file not found"]),
    "a directory": ("dir", ["is a directory"]),
    "channels first": (
        dict(x=images(6).transpose(0, 3, 1, 2), y=np.arange(6) % 2),
        ["x must be uint8 N x H x W x 3", "x.transpose(0, 2, 3, 1)"],
    ),
    "grayscale": (dict(x=images(6)[..., 0], y=np.arange(6) % 2), ["np.repeat"]),
    "float images": (
        dict(x=images(6).astype(np.float32) / 255, y=np.arange(6) % 2),
        ["uint8 pixels 0..255", "astype(np.uint8)"],
    ),
    "NaN images": (
        dict(x=np.full((6, 32, 32, 3), np.nan, np.float32), y=np.arange(6) % 2),
        ["NaN or infinite", "fix or drop"],
    ),
    "label outside the classes": (
        dict(x=images(6), y=np.array([0, 1, 0, 1, 0, 5]), classes=np.array(["a", "b"])),
        ["label 5 out of range for 2 classes"],
    ),
    "stray huge label": (
        dict(x=images(6), y=np.array([0, 1, 0, 1, 0, 10**9])),
        ["label 1000000000", "labels 0..K-1"],
    ),
    "negative label": (dict(x=images(6), y=np.array([0, -1, 0, 1, 0, 1])), ["negative label"]),
    "labels length": (dict(x=images(6), y=np.arange(5)), ["5 labels for 6 images"]),
    "no y": (dict(x=images(6)), ["no array 'y'"]),
}


@pytest.mark.parametrize("kind", list(NPZ_CASES))
def test_hostile_npz_data_exits_2_naming_the_file(tmp_path, capsys, kind) -> None:
    train = save_npz(tmp_path / "train.npz", x=images(6), y=np.arange(6) % 2)
    arrays, fragments = NPZ_CASES[kind]
    test = tmp_path / ("missing.npz" if arrays is None else "test.npz")
    if arrays == "dir":
        test.mkdir()
    elif arrays is not None:
        np.savez(test, **arrays)
    argv = ["train", "--out", str(tmp_path / "r"), "--quiet", *_npz_overrides(train, test)]
    code, err = _run_cli(argv, capsys)
    _assert_user_error(code, err, str(test), *fragments)


def test_missing_data_roots_say_where_and_how(tmp_path, capsys) -> None:
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("tiny-imagenet", "wnids.txt")):
        root = tmp_path / "nowhere"
        argv = ["train", "--out", str(tmp_path / "r"), f"data.name={name}", f"data.root={root}"]
        code, err = _run_cli([*argv, *SMALL], capsys)
        _assert_user_error(code, err, str(root), "not a directory", folder, "data.download=true")


def test_tiny_imagenet_with_a_missing_class_folder(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = make_tiny(tmp_path / "data" / "tiny-imagenet-200")
    missing = folder / "train" / WNIDS[1] / "images"
    for image in missing.iterdir():
        image.unlink()
    missing.rmdir()
    argv = ["train", "--out", str(tmp_path / "r"), "data.name=tiny-imagenet"]
    code, err = _run_cli([*argv, f"data.root={folder.parent}", *SMALL], capsys)
    _assert_user_error(code, err, str(missing), WNIDS[1], "wnids.txt")


# --------------------------------------------------------------------------- --debug


@pytest.mark.parametrize("position", ["before the command", "after the command"])
def test_debug_adds_the_traceback(tmp_path, capsys, position) -> None:
    argv = ["train", "--out", str(tmp_path / "r"), "train.epochs=0"]
    argv = ["--debug", *argv] if position == "before the command" else [*argv, "--debug"]
    code, err = _run_cli(argv, capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "ConfigError" in err
    assert err.strip().splitlines()[-1] == ("dnr train: error: train.epochs: must be >= 1, got 0")


def test_debug_on_other_commands(tmp_path, capsys) -> None:
    code, err = _run_cli(["eval", str(tmp_path / "none"), "--debug"], capsys)
    assert code == 2
    assert "Traceback" in err
    assert str(tmp_path / "none") in err
    code, err = _run_cli(["report", str(tmp_path / "none")], capsys)
    _assert_user_error(code, err, str(tmp_path / "none"))


# --------------------------------------------------------------------------- --overwrite


@pytest.fixture
def finished_run(tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    overrides = tiny_overrides(train__epochs=1, data__subset=64, eval__subset=16)
    assert main(["train", "--out", str(out), "--quiet", *overrides]) == 0
    assert RunDir(out).eval_json.is_file()
    return out


@pytest.mark.slow
def test_overwrite_replaces_only_the_runs_files(finished_run, capsys) -> None:
    run = RunDir(finished_run)
    (finished_run / "notes.txt").write_text("my notes")
    (finished_run / "plots").mkdir()
    (finished_run / "plots" / "mine.png").write_bytes(b"png")
    (run.checkpoints / "keep.txt").write_text("mine too")
    (run.checkpoints / ".last.pt.abc123.tmp").write_bytes(b"half a write")
    old_weights = run.model_weights.read_bytes()
    overrides = tiny_overrides(train__epochs=1, data__subset=64, train__lr=0.02)

    argv = ["train", "--out", str(finished_run), "--quiet", "--no-eval", *overrides]
    code, err = _run_cli(argv, capsys)
    _assert_user_error(code, err, "already holds a run", "--overwrite", "--resume")
    assert run.model_weights.read_bytes() == old_weights

    code, err = _run_cli([*argv, "--overwrite", "--resume"], capsys)
    _assert_user_error(code, err, "--overwrite", "--resume")

    capsys.readouterr()
    assert main(["train", "--overwrite", *argv[1:]]) == 0
    err = capsys.readouterr().err
    assert "--overwrite: removed the earlier run's" in err
    assert "eval.json" in err
    assert "notes.txt" not in err
    assert (finished_run / "notes.txt").read_text() == "my notes"
    assert (finished_run / "plots" / "mine.png").read_bytes() == b"png"
    assert (run.checkpoints / "keep.txt").read_text() == "mine too"
    assert not (run.checkpoints / ".last.pt.abc123.tmp").exists()
    assert not run.eval_json.exists()
    assert not run.eval_md.exists()
    assert not run.previous_checkpoint.exists()  # a one-epoch run has no earlier state
    assert "lr: 0.02" in run.config.read_text()
    assert run.model_weights.read_bytes() != old_weights
    records = metrics(run.path)
    assert [r["epoch"] for r in records] == [1]


@pytest.mark.slow
def test_overwrite_of_an_empty_or_missing_directory_just_trains(tmp_path, capsys) -> None:
    overrides = tiny_overrides(train__epochs=1, data__subset=32, eval__subset=8)
    out = tmp_path / "new"
    assert (
        main(["train", "--overwrite", "--out", str(out), "--quiet", "--no-eval", *overrides]) == 0
    )
    assert "--overwrite: removed" not in capsys.readouterr().err
    assert RunDir(out).model_weights.is_file()
