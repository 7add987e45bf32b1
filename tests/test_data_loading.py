"""Where the data lives while training (device or host memory), a dataset handed to
``train`` from Python, and ``dnr eval`` on a test set alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dnr.cli import main
from dnr.config import load_config
from dnr.data import (
    BatchLoader,
    HostBatchLoader,
    Split,
    from_datasets,
    load_dataset,
    make_loader,
)
from dnr.data.loader import fits_on_device
from dnr.data.statistics import channel_stats
from dnr.modelfile import load_model
from dnr.models import create_model
from helpers import QUIET, assert_same_weights, metrics, save_npz, strip_timing, tiny_overrides


def indexed_split(n: int = 100, size: int = 16) -> Split:
    x = np.random.default_rng(0).integers(1, 256, (n, 3, size, size), dtype=np.uint8)
    return Split(torch.from_numpy(x), torch.arange(n))


@pytest.mark.parametrize(("shuffle", "augment"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_host_loader_yields_the_resident_loaders_batches_bitwise(
    shuffle: bool, augment: bool, rank: int, world: int
) -> None:
    split = indexed_split(101)
    options = {"shuffle": shuffle, "augment": augment, "seed": 7, "rank": rank, "world": world}
    resident = BatchLoader(split, 16, "cpu", **options)
    host = HostBatchLoader(split, 16, "cpu", **options)
    assert len(host) == len(resident) == 7
    for epoch, start in ((0, 0), (3, 2)):
        a = list(resident.epoch(epoch, start))
        b = list(host.epoch(epoch, start))
        assert len(a) == len(b) == 7 - start
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)
    # the host loader keeps the set where it was: nothing was copied to a device
    assert host.x.data_ptr() == split.x.data_ptr()


def test_make_loader_follows_data_resident(monkeypatch) -> None:
    split = indexed_split(10)
    assert type(make_loader(split, 4, "cpu", resident=True, shuffle=False, augment=False)) is (
        BatchLoader
    )
    host = make_loader(split, 4, "cpu", resident=False, shuffle=False, augment=False)
    assert type(host) is HostBatchLoader
    assert fits_on_device(split, "cpu", "auto")  # off CUDA the device memory is host memory
    need = split.x.nbytes + split.y.nbytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * need, 10 * need))
    assert fits_on_device(split, "cuda:0", "auto")  # exactly half the free memory: fits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * need - 1, 10**12))
    assert not fits_on_device(split, "cuda:0", "auto")
    assert fits_on_device(split, "cuda:0", True)
    assert not fits_on_device(split, "cpu", False)


# --------------------------------------------------------------------------- dnr eval


def weights_file(tmp_path: Path, num_classes: int = 10) -> Path:
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=num_classes, width=0.0625)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    return path


def eval_argv(weights: Path, *data: str) -> list[str]:
    return [
        "eval", "--model", "vgg16", "--num-classes", "10", "--width", "0.0625",
        "--weights", str(weights), "--protocol", "pgd20", "--no-sanity", "--json", *data,
    ]  # fmt: skip


@pytest.mark.slow
def test_eval_reads_an_npz_test_file_alone(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    save_npz(tmp_path / "test.npz", x=x, y=np.arange(12) % 7)  # labels 0..6 of 10 classes
    weights = weights_file(tmp_path)
    code = main(eval_argv(weights, "data.name=npz", f"data.test={tmp_path / 'test.npz'}"))
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    clean = report["results"][0]
    assert 0 <= clean["accuracy"] <= 1
    # declared class names that disagree with the model's outputs are still refused
    save_npz(tmp_path / "five.npz", x=x, y=np.arange(12) % 5, classes=np.array(list("abcde")))
    code = main(eval_argv(weights, "data.name=npz", f"data.test={tmp_path / 'five.npz'}"))
    err = capsys.readouterr().err
    assert code == 2
    assert "the model has 10 outputs but dataset npz has 5 classes" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_eval_reads_a_folder_with_only_test(tmp_path: Path, capsys) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(10):
        folder = tmp_path / "imgs" / "test" / f"class{c}"
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "0.png")
    weights = weights_file(tmp_path)
    code = main(eval_argv(weights, "data.name=folder", f"data.root={tmp_path / 'imgs'}"))
    assert code == 0, capsys.readouterr().err
    assert len(json.loads(capsys.readouterr().out)["results"]) >= 1


def untimed(results: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


@pytest.mark.slow
def test_eval_same_accuracy_from_test_alone_as_with_train(tmp_path: Path, capsys) -> None:
    """Reading the test set alone changes nothing about the test set."""
    rng = np.random.default_rng(2)
    for name, n in (("train", 30), ("test", 16)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        save_npz(tmp_path / f"{name}.npz", x=x, y=np.arange(n) % 10)
    weights = weights_file(tmp_path)
    test = f"data.test={tmp_path / 'test.npz'}"
    assert main(eval_argv(weights, "data.name=npz", test)) == 0
    alone = untimed(json.loads(capsys.readouterr().out)["results"])
    both = [*eval_argv(weights, "data.name=npz", test), f"data.train={tmp_path / 'train.npz'}"]
    assert main(both) == 0
    assert untimed(json.loads(capsys.readouterr().out)["results"]) == alone


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_train_on_a_python_dataset_and_the_host_loader_gives_the_same_run(
    tmp_path: Path, capsys
) -> None:
    """``train(data=from_datasets(...))`` trains; its model normalises with the training
    split's own statistics; data.resident=false trains the same bits as resident."""
    from dnr.training import train

    digits = load_dataset(load_config(None, tiny_overrides()).data)
    items = [(x.numpy().transpose(1, 2, 0), int(y)) for x, y in zip(digits.train.x, digits.train.y)]
    tests = [(x.numpy().transpose(1, 2, 0), int(y)) for x, y in zip(digits.test.x, digits.test.y)]
    source = from_datasets(items, tests)
    runs = {}
    for resident in ("true", "false"):
        cfg = load_config(None, tiny_overrides(train__epochs=1, data__resident=resident))
        out = tmp_path / f"resident-{resident}"
        result = train(cfg, out, data=source, **QUIET)
        runs[resident] = out
        assert result.model is not None
    assert_same_weights(runs["true"], runs["false"])
    # dnr eval RUN cannot find a Python dataset again: it asks for the test data
    assert main(["eval", str(runs["true"]), "--protocol", "pgd20", "--no-sanity"]) == 2
    assert "trained on a dataset given from Python" in capsys.readouterr().err
    argv = ["eval", str(runs["true"]), "--protocol", "pgd20", "--no-sanity", "--json"]
    assert main([*argv, "data.name=digits", "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["num_examples"] == 360
    assert strip_timing(metrics(runs["true"])) == strip_timing(metrics(runs["false"]))
    model = load_model(runs["true"])
    cfg = load_config(None, tiny_overrides()).data
    from dnr.data import split_dataset

    train_x = split_dataset(source, cfg).train.x
    mean, std = channel_stats(train_x)
    assert model.normalize.mean.flatten().tolist() == pytest.approx(mean, abs=1e-6)
    assert model.normalize.std.flatten().tolist() == pytest.approx(std, abs=1e-6)


@pytest.mark.slow
def test_train_on_a_folder_then_eval_the_run_resizes_test_images_the_same_way(
    tmp_path: Path, capsys
) -> None:
    """Images of mixed sizes, data.image_size=32: the run trains; ``dnr eval RUN`` reads
    the recorded image_size and test/ alone, and reproduces the run's own test accuracy."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("test", 8)):
        for c, colour in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220))):
            folder = tmp_path / "imgs" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                side = int(rng.integers(34, 46))
                noise = rng.integers(-30, 30, (side, side + 3, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    overrides = tiny_overrides(
        data__name="folder",
        data__root=str(tmp_path / "imgs"),
        data__image_size=32,
        data__subset="null",
        data__val_size=12,
        train__epochs=1,
        eval__subset="null",
        eval__protocol="pgd20",
        eval__sanity="false",
    )
    argv = ["train", "--out", str(out), "--quiet", *overrides]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    ours = json.loads((out / "eval.json").read_text())["results"][0]
    evaluate = ["eval", str(out), "--protocol", "pgd20", "--no-sanity", "--json"]
    assert main([*evaluate, "--out", str(tmp_path / "e")]) == 0
    again = json.loads(capsys.readouterr().out)["results"][0]
    assert again["num_examples"] == ours["num_examples"] == 24
    assert again["accuracy"] == ours["accuracy"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["dataset"]["image_size"] == 32
    assert meta["classes"] == ["c0", "c1", "c2"]
