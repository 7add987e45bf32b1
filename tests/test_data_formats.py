"""The folder, svhn and Python-dataset sources, the CIFAR converter and per-dataset mean/std:
each built in its real format inside tmp_path."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnr.config import ConfigError, DataConfig, load_config
from dnr.constants import CIFAR_MEAN, CIFAR_STD
from dnr.data import (
    DataError,
    folder,
    from_datasets,
    load_dataset,
    safety,
    split_dataset,
    svhn,
)
from dnr.data.convert import convert_cifar
from dnr.data.convert import main as convert_main
from dnr.data.folder import decode_image
from dnr.data.statistics import channel_stats
from dnr.data.svhn import svhn_arrays
from helpers import images, optional_import, save_npz
from test_data import make_cifar10


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- folder


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_folder(root: Path, size: int = 16) -> dict[str, dict[str, list[np.ndarray]]]:
    """train: cat x2, dog x1, eel x1; test: cat x1, eel x1 (no dog); PNG, lossless."""
    rng = np.random.default_rng(0)
    layout = {"train": {"cat": 2, "dog": 1, "eel": 1}, "test": {"cat": 1, "eel": 1}}
    pixels: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, counts in layout.items():
        pixels[split] = {}
        for name, count in counts.items():
            pixels[split][name] = []
            for i in range(count):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                save_png(root / split / name / f"{i}.png", img)
                pixels[split][name].append(img)
        (root / split / "cat" / ".DS_Store").write_bytes(b"\0junk")  # not an image: skipped
    return pixels


def test_folder_layout_classes_and_pixels(tmp_path: Path) -> None:
    pixels = make_folder(tmp_path)
    data = load_dataset(DataConfig(name="folder", root=str(tmp_path), val_size=0))
    assert data.meta.classes == ["cat", "dog", "eel"]  # sorted train/ folders
    assert (data.meta.num_classes, data.meta.image_size) == (3, 16)
    assert data.train.y.tolist() == [0, 0, 1, 2]
    assert data.test.y.tolist() == [0, 2]  # eel keeps train's index 2 although dog is absent
    expected = np.stack(
        [
            pixels["train"]["cat"][0],
            pixels["train"]["cat"][1],
            pixels["train"]["dog"][0],
            pixels["train"]["eel"][0],
        ]
    )
    assert np.array_equal(data.train.x.numpy(), expected.transpose(0, 3, 1, 2))
    # no dataset statistics: computed from the training split
    mean, std = channel_stats(data.train.x)
    assert data.meta.mean == mean
    assert data.meta.std == std


def test_folder_val_stands_in_for_test_and_grayscale_becomes_rgb(tmp_path: Path) -> None:
    save_png(tmp_path / "train" / "a" / "0.png", np.full((8, 8, 3), 7, np.uint8))
    Image.new("L", (8, 8), 90).save(tmp_path / "train" / "a" / "1.png")
    save_png(tmp_path / "val" / "a" / "0.png", np.full((8, 8, 3), 9, np.uint8))
    data = load_dataset(DataConfig(name="folder", root=str(tmp_path), val_size=0))
    assert len(data.test) == 1
    assert int(data.test.x[0, 0, 0, 0]) == 9
    assert data.train.x[1].unique().tolist() == [90]


def test_folder_image_size_resizes_and_center_crops(tmp_path: Path) -> None:
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 8:32] = 255  # white in the middle: a center crop sees only white, a left one black
    save_png(tmp_path / "train" / "a" / "wide.png", wide)
    save_png(tmp_path / "train" / "a" / "small.png", np.full((5, 5, 3), 50, np.uint8))
    save_png(tmp_path / "test" / "a" / "0.png", np.full((10, 10, 3), 3, np.uint8))
    with pytest.raises(DataError, match="set data.image_size=N") as err:
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    assert "small.png" in one_line(err) or "wide.png" in one_line(err)
    data = load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=10, val_size=0))
    assert tuple(data.train.x.shape) == (2, 3, 10, 10)
    assert data.meta.image_size == 10
    small, wide_out = data.train.x  # sorted names: small.png, wide.png
    assert small.unique().tolist() == [50]
    assert wide_out.unique().tolist() == [255]  # 40x20 -> 20x10 -> center 10x10: all white
    assert decode_image(tmp_path / "train" / "a" / "wide.png", None).shape == (3, 20, 40)


@pytest.mark.parametrize("kind", ["unknown-test-class", "corrupt", "no-test", "no-root"])
def test_folder_mistakes_are_one_line_naming_the_culprit(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "imgs"
    make_folder(root)
    culprit = str(root)
    if kind == "unknown-test-class":
        save_png(root / "test" / "fox" / "0.png", np.zeros((16, 16, 3), np.uint8))
        culprit = str(root / "test" / "fox")
    elif kind == "corrupt":
        bad = root / "train" / "dog" / "broken.png"
        bad.write_bytes(b"not a png")
        culprit = str(bad)
    elif kind == "no-test":
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "test").rmdir()
        culprit = "test/"
    else:
        root = tmp_path / "missing"
        culprit = str(root)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="folder", root=str(root)))
    assert culprit in one_line(err)


def test_folder_test_only_decodes_no_training_image(tmp_path: Path, monkeypatch) -> None:
    make_folder(tmp_path)
    (tmp_path / "train" / "dog" / "0.png").write_bytes(b"corrupt, but never opened")
    data = load_dataset(DataConfig(name="folder", root=str(tmp_path)), test_only=True)
    assert len(data.train) == 0
    assert len(data.val) == 0
    assert data.test.y.tolist() == [0, 2]
    assert data.meta.classes == ["cat", "dog", "eel"]  # train/'s folders still name them


def test_folder_pixels_are_cached_per_split_and_keyed_by_the_files(
    tmp_path: Path, monkeypatch
) -> None:
    make_folder(tmp_path)
    cfg = DataConfig(name="folder", root=str(tmp_path), val_size=0)
    first = load_dataset(cfg)
    assert len(list(tmp_path.glob("dnr-folder-*.npz"))) == 2  # train and test, next to them

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded an image although it was cached")

    monkeypatch.setattr(folder.Image, "open", no_decoding)
    second = load_dataset(cfg)
    assert torch.equal(first.train.x, second.train.x)
    assert torch.equal(first.test.x, second.test.x)
    assert torch.equal(load_dataset(cfg, test_only=True).test.x, first.test.x)  # dnr eval
    monkeypatch.undo()

    save_png(tmp_path / "train" / "dog" / "9.png", np.zeros((16, 16, 3), np.uint8))
    third = load_dataset(cfg)  # a new file: train is decoded again, test still cached
    assert len(third.train) == 5
    assert third.train.y.tolist() == [0, 0, 1, 1, 2]
    assert len(list(tmp_path.glob("dnr-folder-*.npz"))) == 3
    resized = load_dataset(replace_cfg(cfg, image_size=8))  # another size: another cache
    assert tuple(resized.train.x.shape[1:]) == (3, 8, 8)
    assert len(list(tmp_path.glob("dnr-folder-*.npz"))) == 5


# --------------------------------------------------------------------------- svhn


def svhn_mat_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrays as in the official files: X uint8 32 x 32 x 3 x N, y N x 1 in 1..10."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # the real files: uint8
    return x, y


def test_svhn_arrays_transpose_and_map_label_10_to_0() -> None:
    x, y = svhn_mat_arrays(12, 0)
    images_, labels = svhn_arrays(x, y, "f.mat")
    assert images_.shape == (12, 3, 32, 32)
    assert images_.dtype == np.uint8
    assert np.array_equal(images_[5], x[:, :, :, 5].transpose(2, 0, 1))
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert labels.dtype == np.int64
    with pytest.raises(DataError, match="f.mat: SVHN labels are 1..10"):
        svhn_arrays(x, np.zeros((12, 1), np.uint8), "f.mat")
    with pytest.raises(DataError, match="f.mat: 'X' must be uint8 H x W x 3 x N"):
        svhn_arrays(x[:, :, :2], y, "f.mat")


def test_svhn_official_mat_files(tmp_path: Path) -> None:
    sio = pytest.importorskip("scipy.io", reason="scipy (the svhn extra) is not installed")
    xtr, ytr = svhn_mat_arrays(30, 1)
    xte, yte = svhn_mat_arrays(10, 2)
    sio.savemat(tmp_path / "train_32x32.mat", {"X": xtr, "y": ytr})  # MATLAB v5, as official
    sio.savemat(tmp_path / "test_32x32.mat", {"X": xte, "y": yte})
    data = load_dataset(DataConfig(name="svhn", root=str(tmp_path), val_size=5))
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 10)
    assert data.meta.num_classes == 10
    assert data.meta.classes[0] == "0"
    assert data.test.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert np.array_equal(data.test.x[3].numpy(), xte[:, :, :, 3].transpose(2, 0, 1))
    assert data.meta.mean != CIFAR_MEAN  # computed from its own training split
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    with pytest.raises(DataError, match="train_32x32.mat: cannot read as a MATLAB file"):
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))


def test_svhn_download_is_md5_checked_and_kept(tmp_path: Path, monkeypatch) -> None:
    sio = pytest.importorskip("scipy.io", reason="scipy (the svhn extra) is not installed")
    payloads = {}
    for name, seed in (("train_32x32.mat", 3), ("test_32x32.mat", 4)):
        buf = io.BytesIO()
        x, y = svhn_mat_arrays(6, seed)
        sio.savemat(buf, {"X": x, "y": y})
        payloads[name] = buf.getvalue()
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(safety.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "svhn"
    with pytest.raises(DataError, match="md5"):  # the official md5 cannot match our file
        load_dataset(DataConfig(name="svhn", root=str(root), download=True))
    for name, payload in payloads.items():
        monkeypatch.setitem(svhn.SVHN_FILES, name, hashlib.md5(payload).hexdigest())
    data = load_dataset(DataConfig(name="svhn", root=str(root), download=True, val_size=0))
    assert (len(data.train), len(data.test)) == (6, 6)
    assert requested[-1] == "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"
    assert (root / "train_32x32.mat").read_bytes() == payloads["train_32x32.mat"]
    load_dataset(DataConfig(name="svhn", root=str(root), download=True))
    assert len(requested) == 3  # one failed, then test + train once each: the files are kept


def test_svhn_missing_file_and_missing_scipy_are_one_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="test_32x32.mat not found; pass data.download=true"):
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))
    (tmp_path / "test_32x32.mat").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"pip install torch-dnr\[svhn\]"):
        load_dataset(DataConfig(name="svhn", root=str(tmp_path)))


# --------------------------------------------------------------------------- from_datasets


class PairDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset over given (image, label) pairs."""

    def __init__(self, items: list[tuple[object, object]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[object, object]:
        return self.items[i]


def test_from_datasets_accepts_pil_float_tensor_and_uint8_array() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    train = PairDataset(
        [
            (Image.fromarray(hwc[0]), 0),
            (torch.from_numpy(hwc[1]).permute(2, 0, 1).float() / 255, torch.tensor(2)),
            (hwc[2], np.int64(1)),
            (hwc[0][..., 0], 1),  # grayscale H x W: repeated to RGB
        ]
    )
    test = PairDataset([(Image.fromarray(hwc[1]), 2)])
    source = from_datasets(train, test)
    assert np.array_equal(source.x_train[:3].numpy(), hwc.transpose(0, 3, 1, 2))
    assert np.array_equal(source.x_train[3].numpy(), np.repeat(hwc[0][None, :, :, 0], 3, 0))
    assert source.y_train.tolist() == [0, 2, 1, 1]
    assert source.y_test.tolist() == [2]
    assert (source.meta.num_classes, source.meta.image_size) == (3, 8)
    assert source.meta.classes_inferred
    assert not source.meta.has_stats
    named = from_datasets(train, test, classes=["a", "b", "c", "d"])
    assert named.meta.classes == ["a", "b", "c", "d"]
    assert not named.meta.classes_inferred
    data = split_dataset(source, DataConfig(val_size=0))
    assert data.meta.has_stats
    assert data.meta.mean == channel_stats(source.x_train)[0]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ((torch.ones(3, 8, 8) * 2, 0), r"train item 1: float images must be in \[0, 1\]"),
        ((np.zeros((8, 6, 3), np.uint8), 0), "train item 1: images must be square"),
        ((np.zeros((4, 4, 3), np.uint8), 0), "train item 1: image is 4x4, item 0 8x8"),
        ((np.zeros((8, 8, 3), np.uint8), 1.5), "train item 1: the label must be an integer"),
        ((np.zeros((8, 8, 3), np.float32), 0), "train item 1: arrays must be uint8"),
        (("a string", 0), "train item 1: an image must be a PIL image"),
    ],
)
def test_from_datasets_bad_items_are_one_line(item: tuple[object, object], message: str) -> None:
    good = (np.zeros((8, 8, 3), np.uint8), 0)
    with pytest.raises(DataError, match=message):
        from_datasets([good, item], [good])


def test_from_datasets_label_beyond_num_classes() -> None:
    item = (np.zeros((8, 8, 3), np.uint8), 4)
    with pytest.raises(DataError, match="label 4 out of range for 3 classes"):
        from_datasets([item], [item], num_classes=3)


# --------------------------------------------------------------------------- mean / std


def test_channel_stats_match_a_direct_float_computation() -> None:
    x = torch.from_numpy(images(5000, 3).transpose(0, 3, 1, 2).copy())  # two chunks
    mean, std = channel_stats(x)
    flat = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(flat.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(flat.std(1, unbiased=False).tolist(), abs=1e-12)


def test_mean_std_given_computed_or_the_datasets_own(tmp_path: Path) -> None:
    save_npz(tmp_path / "a.npz", x=images(40, 0), y=np.arange(40) % 2)
    save_npz(tmp_path / "t.npz", x=images(10, 1), y=np.arange(10) % 2)
    npz = DataConfig(name="npz", train=[str(tmp_path / "a.npz")], test=[str(tmp_path / "t.npz")])
    given = load_dataset(replace_cfg(npz, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5]))
    assert (given.meta.mean, given.meta.std) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    computed = load_dataset(npz)  # npz has no statistics of its own: computed ...
    assert computed.meta.mean == channel_stats(computed.train.x)[0]  # ... after the hold-out
    assert (
        computed.meta.mean
        != channel_stats(torch.from_numpy(images(40, 0).transpose(0, 3, 1, 2).copy()))[0]
    )
    digits = load_dataset(DataConfig(val_size=64))  # a dataset with its own: kept
    assert (digits.meta.mean, digits.meta.std) == (CIFAR_MEAN, CIFAR_STD)
    digits_c = load_dataset(DataConfig(val_size=64, mean="compute", std="compute"))
    assert (digits_c.meta.mean, digits_c.meta.std) == channel_stats(digits_c.train.x)


def test_a_constant_channel_is_centred_not_divided_by_zero(tmp_path: Path, caplog) -> None:
    x = images(20, 0)
    x[..., 2] = 77  # the blue plane is constant
    save_npz(tmp_path / "a.npz", x=x, y=np.arange(20) % 2)
    cfg = DataConfig(name="npz", train=[str(tmp_path / "a.npz")], test=[str(tmp_path / "a.npz")])
    data = load_dataset(replace_cfg(cfg, val_size=0))
    assert data.meta.std[2] == 1.0
    assert data.meta.mean[2] == pytest.approx(77 / 255)
    assert 0 < data.meta.std[0] < 1
    assert "constant" in caplog.text


def replace_cfg(cfg: DataConfig, **changes: object) -> DataConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.mean=[0.5,0.5]", "data.mean: give 3 values"),
        ("data.std=[0.2,0,0.2]", r"data.std: values must be in \(0, 1\]"),
        ("data.mean=[125,123,114]", "pixel scale, not 0..255"),
        ("data.mean=average", "data.mean"),
        ("data.resident=sometimes", "data.resident"),
        ("data.image_size=4", "data.image_size: must be >= 8"),
        ("data.image_size=64", "data.image_size: only data.name=folder resizes"),
    ],
)
def test_data_config_mistakes_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_data_config_values_parse() -> None:
    cfg = load_config(None, ["data.mean=compute", "data.std=[0.2,0.2,0.2]", "data.resident=false"])
    assert (cfg.data.mean, cfg.data.std, cfg.data.resident) == ("compute", [0.2] * 3, False)
    assert load_config(None, ["data.resident=auto"]).data.resident == "auto"


# --------------------------------------------------------------------------- convert


def test_convert_cifar_tarball_to_npz_the_npz_reader_reads(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "src")
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train, test = convert_cifar("cifar10", tarball, tmp_path / "out")
    assert (train.name, test.name) == ("cifar10_train.npz", "cifar10_test.npz")
    original = load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "src"), val_size=4))
    converted = load_dataset(
        DataConfig(name="npz", train=[str(train)], test=[str(test)], val_size=4)
    )
    for split in ("train", "val", "test"):
        a, b = getattr(original, split), getattr(converted, split)
        assert torch.equal(a.x, b.x), split
        assert torch.equal(a.y, b.y), split
    assert converted.meta.classes == original.meta.classes
    with np.load(test) as z:
        assert z["x"].shape == (20, 32, 32, 3)
        assert z["x"].dtype == np.uint8


def test_convert_command_line_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert convert_main(["cifar10", "--from", str(tmp_path / "nope.tar.gz"), "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nope.tar.gz: not found" in err
    code = "import sys; from dnr.data.convert import main; sys.exit(main())"
    made = make_cifar10(tmp_path / "src")
    run = subprocess.run(
        [sys.executable, "-c", code, "cifar10", "--from", str(made), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "cifar10_train.npz" in run.stdout


def test_from_datasets_reads_a_torchvision_dataset() -> None:
    """The twin of the PairDataset tests on a real torchvision Dataset (PIL images)."""
    datasets = optional_import("torchvision.datasets")
    transforms = optional_import("torchvision.transforms")
    train = datasets.FakeData(20, (3, 16, 16), num_classes=4, random_offset=0)
    test = datasets.FakeData(8, (3, 16, 16), num_classes=4, random_offset=100)
    source = from_datasets(train, test, num_classes=4)
    first, label = train[0]
    assert np.array_equal(source.x_train[0].numpy(), np.asarray(first).transpose(2, 0, 1))
    assert int(source.y_train[0]) == int(label)
    assert (len(source.y_train), len(source.y_test), source.meta.num_classes) == (20, 8, 4)
    as_tensor = datasets.FakeData(
        20, (3, 16, 16), num_classes=4, random_offset=0, transform=transforms.ToTensor()
    )
    assert torch.equal(from_datasets(as_tensor, test, num_classes=4).x_train, source.x_train)
