"""dnr.data: every format built in its real on-disk layout inside tmp_path, splits, batches."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnr.config import DataConfig
from dnr.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    BatchLoader,
    DataError,
    DatasetMeta,
    Split,
    cifar,
    digits,
    load_dataset,
    safety,
    tiny_imagenet,
)
from dnr.data.loader import random_crop_flip, split_indices, validation_size
from dnr.data.source import SourceData, read_source
from dnr.registry import DATASETS, UnknownNameError
from helpers import COLORS, WNIDS, images, make_tiny, save_jpeg, save_npz

# --------------------------------------------------------------------------- helpers


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), like the original CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(  # Python 2's numpy named the module numpy.core
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    )
    assert b"numpy._core" not in data
    assert b"_codecs" not in data
    path.write_bytes(data)


def dump_py3(obj: object, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=4)


def cifar_rows(labels: list[int], base: int) -> np.ndarray:
    """N x 3072 rows: R plane = base + i, G plane = 100, B plane = 200 (so layout is checkable)."""
    n = len(labels)
    rows = np.zeros((n, 3, 32, 32), np.uint8)
    rows[:, 0] = (base + np.arange(n))[:, None, None]
    rows[:, 1], rows[:, 2] = 100, 200
    return rows.reshape(n, 3072)


def make_cifar10(root: Path, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(per_batch)]
        batch = {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": labels,
            b"data": cifar_rows(labels, base=10 * b),
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(per_batch)],
        }
        dump_py2(batch, folder / f"data_batch_{b}")
    test_labels = sorted(i % 10 for i in range(20))  # sorted by class, like the real test set
    dump_py2(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels,
            b"data": cifar_rows(test_labels, base=100),
            b"filenames": [b"t.png"] * 20,
        },
        folder / "test_batch",
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    dump_py2(
        {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072},
        folder / "batches.meta",
    )
    return folder


def make_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 30), ("test", 20)):
        fine = [(7 * i) % 100 for i in range(n)]
        dump_py3(
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": name.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": cifar_rows(fine, base=1),
            },
            folder / name,
        )
    dump_py3(
        {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
        folder / "meta",
    )
    return folder


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_python2_pickles(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=4, seed=1))
    assert data.meta == DatasetMeta(
        "cifar10",
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        10,
        32,
        CIFAR_MEAN,
        CIFAR_STD,
    )
    assert data.train.x.shape == (16, 3, 32, 32)
    assert data.val.x.shape == (4, 3, 32, 32)
    assert data.test.x.shape == (20, 3, 32, 32)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.uint8
        assert split.y.dtype == torch.int64
        assert (split.x[:, 1] == 100).all()
        assert (split.x[:, 2] == 200).all()
    # Source row r of the train set is batch r // 4 + 1, image r % 4.
    rows = torch.tensor(data.indices["train"])
    assert torch.equal(data.train.x[:, 0, 0, 0], (10 * (rows // 4 + 1) + rows % 4).to(torch.uint8))
    assert torch.equal(data.train.y, (rows // 4 + 1 + rows % 4) % 10)
    assert sorted(data.indices["train"] + data.indices["val"]) == list(range(20))


def test_cifar10_root_may_be_the_folder_itself(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(folder), val_size=0))
    assert len(data.train) == 20
    assert len(data.val) == 0


def test_cifar100_python3_pickles_fine_labels(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), val_size=5))
    assert data.meta.num_classes == 100
    assert data.meta.classes[:2] == ["class0", "class1"]
    assert len(data.train) == 25
    assert len(data.val) == 5
    assert len(data.test) == 20
    expected = torch.tensor([(7 * i) % 100 for i in data.indices["test"]])
    assert torch.equal(data.test.y, expected)  # fine labels, not coarse


def test_cifar_missing_says_where_and_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))
    message = one_line(err)
    assert "cifar-10-batches-py" in message
    assert "data.download=true" in message


def test_cifar_download_is_md5_checked_and_extracted(tmp_path: Path, monkeypatch) -> None:
    make_cifar10(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = buf.getvalue()
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(safety.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5"):  # the real md5 cannot match our archive
        load_dataset(DataConfig(name="cifar10", root=str(root), download=True))
    assert not list(root.glob("*.tar.gz*"))

    spec = replace(cifar._CIFAR_SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(cifar._CIFAR_SPECS, "cifar10", spec)
    data = load_dataset(DataConfig(name="cifar10", root=str(root), download=True, val_size=0))
    assert len(data.train) == 20
    assert requested[-1] == spec.url
    assert not (root / "cifar-10-python.tar.gz").exists()


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "symlink"])
def test_safe_extract_rejects_unsafe_tar_members(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("ok/file.txt" if bad == "symlink" else bad)
        if bad == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="refusing"):
        safety.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_rejects_unsafe_zip_members(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", "bad")
    with pytest.raises(DataError, match="refusing"):
        safety.safe_extract(archive, tmp_path / "out")


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_os_system(tmp_path: Path, monkeypatch) -> None:
    folder = make_cifar10(tmp_path)
    dump_py3({b"data": _Evil(), b"labels": [0]}, folder / "data_batch_2")
    assert b"system" in (folder / "data_batch_2").read_bytes()
    calls: list[str] = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd) or 0)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    message = one_line(err)
    assert "data_batch_2" in message
    assert "refusing to load global" in message
    assert "system" in message
    assert calls == []
    # A numpy array pickled with the newest protocol (Python >= 3.14's default) still loads.
    path = tmp_path / "p5.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(6, dtype=np.uint8)}, protocol=5))
    assert np.array_equal(safety.restricted_load(path)["a"], np.arange(6))


def _cifar_bad(kind: str) -> object:
    good = {b"labels": [1, 2, 3], b"data": cifar_rows([1, 2, 3], base=0)}
    return {
        "float data": {**good, b"data": good[b"data"].astype(np.float32)},
        "wrong shape": {**good, b"data": np.zeros((3, 100), np.uint8)},
        "length mismatch": {**good, b"labels": [1, 2]},
        "label out of range": {**good, b"labels": [1, 10, 3]},
        "negative label": {**good, b"labels": [1, -1, 3]},
        "non-integer label": {**good, b"labels": [1, 2.5, 3]},
        "no labels": {b"data": good[b"data"]},
        "empty": {b"labels": [], b"data": np.zeros((0, 3072), np.uint8)},
        "not a dict": [1, 2, 3],
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "float data",
        "wrong shape",
        "length mismatch",
        "label out of range",
        "negative label",
        "non-integer label",
        "no labels",
        "empty",
        "not a dict",
        "truncated",
    ],
)
def test_cifar_bad_data_names_the_file(tmp_path: Path, kind: str) -> None:
    folder = make_cifar10(tmp_path)
    path = folder / "data_batch_3"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    else:
        dump_py2(_cifar_bad(kind), path)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(path) in one_line(err)


# --------------------------------------------------------------------------- Tiny-ImageNet


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return make_tiny(tmp_path / "data" / "tiny-imagenet-200")


def _count_opens(monkeypatch, fail: bool = False) -> list[str]:
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(str(path))
        if fail:
            raise AssertionError(f"decoded {path} although it was cached")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_tiny_imagenet_layout(tiny: Path, monkeypatch) -> None:
    opened = _count_opens(monkeypatch)
    data = load_dataset(DataConfig(name="tiny-imagenet", root=str(tiny.parent), val_size=0))
    assert len(opened) == 13  # 9 train + 4 val; test/ (unlabelled) and .DS_Store ignored
    assert data.meta.name == "tiny-imagenet"
    assert data.meta.image_size == 64
    assert data.meta.classes == ["goldfish", "European fire salamander", "bullfrog"]
    assert data.meta.num_classes == 3
    assert data.meta.mean == (0.4802, 0.4481, 0.3975)
    assert data.train.x.shape == (9, 3, 64, 64)
    assert data.train.x.dtype == torch.uint8
    assert data.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # wnids.txt order
    assert data.test.y.tolist() == [2, 0, 1, 0]  # val_annotations.txt order and labels
    mean = data.train.x.float().mean(dim=(2, 3))
    assert (mean[0] - torch.tensor(COLORS[0])).abs().max() < 8  # RGB kept
    gray = data.train.x[4]  # n01629819_1.JPEG: the grayscale JPEG (sorted: _0, _1, _10)
    assert gray.shape == (3, 64, 64)
    assert torch.equal(gray[0], gray[1])
    assert torch.equal(gray[1], gray[2])
    assert abs(gray.float().mean().item() - 90) < 3
    assert torch.equal(data.test.x[3][0], data.test.x[3][2])


@pytest.mark.parametrize("which", ["parent", "folder", "sample-name"])
def test_tiny_imagenet_root_variants(tmp_path: Path, monkeypatch, which: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    name = "tiny-imagenet-200-sample" if which == "sample-name" else "tiny-imagenet-200"
    folder = make_tiny(tmp_path / name)
    root = tmp_path if which == "parent" else folder
    data = load_dataset(DataConfig(name="tiny-imagenet", root=str(root), val_size=0))
    assert len(data.train) == 9
    assert len(data.test) == 4


def test_tiny_imagenet_missing_mentions_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="tiny-imagenet", root=str(tmp_path)))
    assert "wnids.txt" in one_line(err)
    assert "data.download=true" in str(err.value)


def test_tiny_imagenet_cache_is_reused_and_keyed_by_file_list(tiny: Path, monkeypatch) -> None:
    cfg = DataConfig(name="tiny-imagenet", root=str(tiny), val_size=0)
    first = load_dataset(cfg)
    assert len(list(tiny.glob("tiny-imagenet-*.npz"))) == 1  # next to the data
    _count_opens(monkeypatch, fail=True)
    second = load_dataset(cfg)  # would fail if a single JPEG were decoded
    assert torch.equal(first.train.x, second.train.x)
    assert torch.equal(first.test.x, second.test.x)

    monkeypatch.undo()
    save_jpeg(tiny / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_2.JPEG", COLORS[2])
    opened = _count_opens(monkeypatch)
    third = load_dataset(cfg)
    assert len(opened) == 14
    assert len(third.train) == 10
    assert len(list(tiny.glob("tiny-imagenet-*.npz"))) == 2


def test_tiny_imagenet_cache_falls_back_to_user_cache_dir(tiny: Path, monkeypatch) -> None:
    xdg = Path(os.environ["XDG_CACHE_HOME"])
    assert tiny_imagenet.cache_dir_for(tiny) == tiny
    monkeypatch.setattr(tiny_imagenet, "_is_writable", lambda path: False)  # root ignores chmod
    assert tiny_imagenet.cache_dir_for(tiny) == xdg / "torch-dnr"
    cfg = DataConfig(name="tiny-imagenet", root=str(tiny), val_size=0)
    load_dataset(cfg)
    assert not list(tiny.glob("*.npz"))
    assert len(list((xdg / "torch-dnr").glob("*.npz"))) == 1
    _count_opens(monkeypatch, fail=True)
    assert len(load_dataset(cfg).train) == 9  # read back from the user cache dir

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tiny_imagenet.user_cache_dir() == Path.home() / ".cache" / "torch-dnr"


def test_tiny_imagenet_cache_write_error_falls_back(tiny: Path, monkeypatch) -> None:
    real_save = tiny_imagenet._save_cache

    def save(path: Path, *arrays: np.ndarray) -> None:
        if path.parent == tiny:
            raise PermissionError(13, "Permission denied")
        real_save(path, *arrays)

    monkeypatch.setattr(tiny_imagenet, "_save_cache", save)
    load_dataset(DataConfig(name="tiny-imagenet", root=str(tiny), val_size=0))
    assert len(list((Path(os.environ["XDG_CACHE_HOME"]) / "torch-dnr").glob("*.npz"))) == 1


def _break_tiny(tiny: Path, kind: str) -> Path:
    """Apply one defect; return the file the error must name."""
    image = tiny / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG"
    annotations = tiny / "val" / "val_annotations.txt"
    if kind == "corrupt jpeg":
        image.write_bytes(b"this is not a jpeg")
    elif kind == "truncated jpeg":
        image.write_bytes(image.read_bytes()[:300])
    elif kind == "wrong size":
        save_jpeg(image, (1, 2, 3), size=32)
    elif kind == "unknown wnid":
        annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
        return annotations
    elif kind == "bad annotation line":
        annotations.write_text(annotations.read_text() + "val_9.JPEG n01443537\n")
        return annotations
    elif kind == "missing val image":
        image = tiny / "val" / "images" / "val_2.JPEG"
        image.unlink()
    elif kind == "missing class folder":
        image = tiny / "train" / WNIDS[2] / "images"
        for p in image.iterdir():
            p.unlink()
        image.rmdir()
    return image


@pytest.mark.parametrize(
    "kind",
    [
        "corrupt jpeg",
        "truncated jpeg",
        "wrong size",
        "unknown wnid",
        "bad annotation line",
        "missing val image",
        "missing class folder",
    ],
)
def test_tiny_imagenet_bad_data_names_the_file(tiny: Path, kind: str) -> None:
    culprit = _break_tiny(tiny, kind)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="tiny-imagenet", root=str(tiny)))
    assert str(culprit) in one_line(err)


# --------------------------------------------------------------------------- npz


def test_npz_multiple_files_and_classes(tmp_path: Path) -> None:
    x0, x1, xt = images(30, 0), images(20, 1), images(10, 2)
    classes = np.array(["cat", "dog", "eel", "fox"])
    save_npz(tmp_path / "a.npz", x=x0, y=np.arange(30) % 3, classes=classes)
    save_npz(tmp_path / "b.npz", x=x1, y=np.arange(20, dtype=np.int32) % 2)
    save_npz(tmp_path / "t.npz", x=xt, y=np.arange(10) % 3, classes=classes)
    cfg = DataConfig(
        name="npz",
        root=str(tmp_path),
        train=["a.npz", str(tmp_path / "b.npz")],
        test=["t.npz"],
        val_size=10,
    )  # relative names resolve under root
    data = load_dataset(cfg)
    names = ["cat", "dog", "eel", "fox"]
    # mean/std: not CIFAR's, but the training split's own (after the hold-out), per channel
    pixels = data.train.x.double().div(255).transpose(0, 1).reshape(3, -1)
    mean = tuple(pixels.mean(1).tolist())
    std = tuple(pixels.std(1, unbiased=False).tolist())
    assert data.meta.mean == pytest.approx(mean, abs=1e-12)
    assert data.meta.std == pytest.approx(std, abs=1e-12)
    assert data.meta == DatasetMeta("npz", names, 4, 32, data.meta.mean, data.meta.std)
    assert data.meta.mean != CIFAR_MEAN
    assert len(data.train) == 40
    assert len(data.val) == 10
    assert len(data.test) == 10
    source_x = np.concatenate([x0, x1]).transpose(0, 3, 1, 2)
    assert np.array_equal(data.train.x.numpy(), source_x[data.indices["train"]])
    assert np.array_equal(data.test.x.numpy(), xt.transpose(0, 3, 1, 2))
    assert data.train.y.dtype == torch.int64


def test_npz_num_classes_is_max_label_over_train_and_test(tmp_path: Path) -> None:
    save_npz(tmp_path / "a.npz", x=images(8), y=np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    save_npz(tmp_path / "t.npz", x=images(4), y=np.array([0, 6, 1, 2]))
    data = load_dataset(
        DataConfig(
            name="npz", train=[str(tmp_path / "a.npz")], test=[str(tmp_path / "t.npz")], val_size=0
        )
    )
    assert data.meta.num_classes == 7
    assert data.meta.classes == [str(i) for i in range(7)]


NPZ_DEFECTS = {
    "float x": dict(x=images(4).astype(np.float32), y=np.arange(4)),
    "no channel axis": dict(x=images(4)[..., 0], y=np.arange(4)),
    "one channel": dict(x=images(4)[..., :1], y=np.arange(4)),
    "not square": dict(x=images(4)[:, :16], y=np.arange(4)),
    "float labels": dict(x=images(4), y=np.array([0.0, 1.0, 2.0, 0.5])),
    "bool labels": dict(x=images(4), y=np.array([True, False, True, False])),
    "negative label": dict(x=images(4), y=np.array([0, -1, 1, 2])),
    "2-D labels": dict(x=images(4), y=np.zeros((4, 1), np.int64)),
    "length mismatch": dict(x=images(4), y=np.arange(3)),
    "empty": dict(x=images(0), y=np.arange(0)),
    "no y": dict(x=images(4)),
    "label beyond classes": dict(x=images(4), y=np.arange(4), classes=np.array(["a", "b"])),
    "object classes": dict(x=images(4), y=np.arange(4), classes=np.array(["a", 1], dtype=object)),
}


@pytest.mark.parametrize("kind", [*NPZ_DEFECTS, "missing file", "not an npz", "npy file"])
def test_npz_bad_data_names_the_file(tmp_path: Path, kind: str) -> None:
    good = save_npz(tmp_path / "good.npz", x=images(6), y=np.arange(6) % 2)
    bad = tmp_path / "bad.npz"
    if kind in NPZ_DEFECTS:
        np.savez(bad, **NPZ_DEFECTS[kind])
    elif kind == "not an npz":
        bad.write_bytes(b"garbage, not a zip archive")
    elif kind == "npy file":
        with open(bad, "wb") as handle:
            np.save(handle, images(2))
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="npz", train=[str(good)], test=[str(bad)], val_size=0))
    assert str(bad) in one_line(err)


# --------------------------------------------------------------------------- splits, digits


def test_validation_size_rule() -> None:
    assert validation_size(49000, 1000) == 1000
    assert validation_size(2000, 1000) == 1000  # leaves exactly half: kept
    assert validation_size(1999, 1000) == 199  # would leave under half: 10% instead
    assert validation_size(1437, 1000) == 143
    assert validation_size(1437, 50) == 50
    assert validation_size(10, 0) == 0


def test_splits_are_seeded_disjoint_and_random(tmp_path: Path) -> None:
    y_test = np.repeat(np.arange(10), 20)  # sorted by class, like CIFAR's test set
    save_npz(tmp_path / "a.npz", x=images(300), y=np.arange(300) % 10)
    save_npz(tmp_path / "t.npz", x=images(200, 1), y=y_test)
    cfg = DataConfig(
        name="npz",
        train=[str(tmp_path / "a.npz")],
        test=[str(tmp_path / "t.npz")],
        val_size=50,
        subset=40,
        seed=3,
    )
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.indices == b.indices
    assert torch.equal(a.train.x, b.train.x)
    assert len(a.train) == 40
    assert len(a.val) == 50
    assert len(a.test) == 40
    assert not set(a.indices["train"]) & set(a.indices["val"])
    for name in ("train", "val", "test"):
        assert a.indices[name] != list(range(len(a.indices[name])))  # never the first N rows
    assert len(set(a.test.y.tolist())) >= 8  # a subset of a class-sorted set spans classes
    assert torch.equal(a.test.y, torch.from_numpy(y_test[a.indices["test"]]))
    other = load_dataset(replace(cfg, seed=4))
    assert other.indices["val"] != a.indices["val"]
    # The validation rows do not depend on the subset cap.
    assert load_dataset(replace(cfg, subset=None)).indices["val"] == a.indices["val"]
    raw = split_indices(300, 200, val_size=50, subset=None, seed=3)
    assert sorted(raw["train"].tolist() + raw["val"].tolist()) == list(range(300))


def test_digits_default_needs_no_files() -> None:
    data = load_dataset(DataConfig())
    names = [str(i) for i in range(10)]
    assert data.meta == DatasetMeta("digits", names, 10, 32, CIFAR_MEAN, CIFAR_STD)
    assert (len(data.train), len(data.val), len(data.test)) == (1437 - 143, 143, 360)
    assert data.train.x.shape[1:] == (3, 32, 32)
    assert data.train.x.dtype == torch.uint8
    assert torch.equal(data.train.x[:, 0], data.train.x[:, 2])
    assert data.train.x.max() > 200
    assert set(data.test.y.tolist()) == set(range(10))
    again = load_dataset(DataConfig(seed=5))
    assert torch.equal(again.test.x, data.test.x)  # the test set does not move with data.seed
    assert again.indices["val"] != data.indices["val"]


# SHA-256 of each tensor's bytes and its sum, as produced by the scikit-learn-based reader
# this package used before the 8x8 digits were bundled: the tensors must stay bit-identical.
DIGITS_REFERENCE = {
    "x_train": (
        (1437, 3, 32, 32),
        343173690,
        "9dd37df5a21cee34d67ee4173868a20b48eca8e9521c881f8e028a4269e25dd4",
    ),
    "y_train": ((1437,), 6408, "faa69f985667f3796aa03f9ebf76dce99ada3afbb60825d09a73c2c91c860a35"),
    "x_test": (
        (360, 3, 32, 32),
        86499825,
        "b8198d2b1e5eacd6c2b251515b893592ffe9b6bc20cbded8df06683d4ff5cc68",
    ),
    "y_test": ((360,), 1662, "2b8ba7b0f976116f797804e168865ae5582866f38d04438f32d50a0821e941c0"),
}


def test_digits_tensors_are_bit_identical_to_the_scikit_learn_reader() -> None:
    source = DATASETS.get("digits")(DataConfig())
    for name, (shape, total, sha) in DIGITS_REFERENCE.items():
        t = getattr(source, name)
        assert tuple(t.shape) == shape
        assert t.is_contiguous()
        assert t.dtype == (torch.uint8 if name.startswith("x") else torch.int64)
        assert int(t.long().sum()) == total
        assert hashlib.sha256(t.numpy().tobytes()).hexdigest() == sha, name
    assert int(source.x_train[0].long().sum()) == 224907
    assert int(source.x_test[-1].long().sum()) == 299808
    assert int(source.x_train[:, 0, 16, 16].long().sum()) == 220120


def test_bundled_raw_digits() -> None:
    images, labels = digits.load_raw_digits()
    assert images.dtype == np.uint8
    assert images.shape == (1797, 8, 8)
    assert labels.dtype == np.int64
    assert labels.shape == (1797,)
    assert images.max() == 16
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.slow
def test_importing_dnr_data_does_not_import_sklearn() -> None:
    code = (
        "import sys, dnr.data\n"
        "from dnr.config import DataConfig\n"
        "dnr.data.load_dataset(DataConfig())\n"
        "bad = [m for m in sys.modules if m == 'sklearn' or m.startswith('sklearn.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- registry


def test_builtin_datasets_are_registered() -> None:
    names = ["cifar10", "cifar100", "digits", "folder", "npz", "svhn", "tiny-imagenet"]
    assert DATASETS.names() == names
    assert DATASETS.get("digits") is digits.read_digits
    with pytest.raises(UnknownNameError, match=", ".join(names)):
        read_source(DataConfig(name="mnist"))


def test_a_new_dataset_is_one_decorated_function() -> None:
    @DATASETS.register(name="toy-dataset")
    def read_toy(cfg: DataConfig) -> SourceData:
        x = torch.zeros(12, 3, 8, 8, dtype=torch.uint8)
        y = torch.arange(12) % 2
        meta = DatasetMeta("toy-dataset", ["a", "b"], 2, 8, CIFAR_MEAN, CIFAR_STD)
        return SourceData(x, y, x[:4], y[:4], meta)

    try:
        data = load_dataset(DataConfig(name="toy-dataset", val_size=2))
        assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 4)
        assert data.meta.name == "toy-dataset"
    finally:
        DATASETS.unregister("toy-dataset")
    assert "toy-dataset" not in DATASETS


# --------------------------------------------------------------------------- BatchLoader


def indexed_split(n: int = 100, size: int = 32) -> Split:
    """Image i is random noise in 1..255 (0 is reserved for padding); label i identifies it."""
    x = np.random.default_rng(0).integers(1, 256, (n, 3, size, size), dtype=np.uint8)
    return Split(torch.from_numpy(x), torch.arange(n))


def reference_crop_flip(
    img: torch.Tensor, top: int, left: int, flip: bool, pad: int = 4
) -> torch.Tensor:
    """torchvision RandomCrop(H, padding) + hflip, written out for one image."""
    h, w = img.shape[1:]
    padded = torch.zeros(img.shape[0], h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    out = padded[:, top : top + h, left : left + w]
    return out.flip(2) if flip else out


def test_loader_yields_every_row_once_in_unit_range() -> None:
    split = indexed_split(100)
    loader = BatchLoader(split, 32, "cpu", shuffle=True, augment=True, seed=1)
    assert len(loader) == 4
    batches = list(loader.epoch(0))
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(100))
    assert seen.tolist() != list(range(100))
    for x, _ in batches:
        assert x.dtype == torch.float32
        assert x.shape[1:] == (3, 32, 32)
        assert x.min() >= 0
        assert x.max() <= 1
    dropped = BatchLoader(split, 32, "cpu", shuffle=True, augment=False, drop_last=True)
    assert len(dropped) == 3
    assert sum(len(y) for _, y in dropped.epoch(0)) == 96
    plain = BatchLoader(split, 64, "cpu", shuffle=False, augment=False)
    x, y = next(iter(plain.epoch(0)))
    assert torch.equal(y, torch.arange(64))
    assert torch.equal(x, split.x[:64].float() / 255)


def test_loader_epochs_are_reproducible_and_differ() -> None:
    split = indexed_split(64)

    def run(loader: BatchLoader, epoch: int) -> list[torch.Tensor]:
        return [t for batch in loader.epoch(epoch) for t in batch]

    a = BatchLoader(split, 16, "cpu", shuffle=True, augment=True, seed=7)
    first = run(a, 3)
    run(a, 0)
    torch.manual_seed(123)  # global RNG state must not matter
    fresh = BatchLoader(split, 16, "cpu", shuffle=True, augment=True, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(first, run(fresh, 3)))
    assert not torch.equal(first[1], run(a, 4)[1])  # another epoch, another order
    b = BatchLoader(split, 16, "cpu", shuffle=True, augment=True, seed=8)
    assert not torch.equal(first[1], run(b, 3)[1])


def test_loader_epoch_seed_is_unchanged() -> None:
    """Batches are seeded exactly as before derive_seed: SeedSequence([seed, epoch])."""
    split = indexed_split(50)
    loader = BatchLoader(split, 50, "cpu", shuffle=True, augment=False, seed=7)
    for epoch in (0, 3):
        state = np.random.SeedSequence([7, epoch]).generate_state(1, np.uint64)[0]
        expected = torch.randperm(50, generator=torch.Generator().manual_seed(int(state)))
        ((_, y),) = loader.epoch(epoch)
        assert torch.equal(y, expected)


def test_random_crop_flip_semantics() -> None:
    x = indexed_split(2).x
    no = torch.tensor([False, False])
    centre = random_crop_flip(x, torch.tensor([[4, 4], [4, 4]]), no)
    assert torch.equal(centre, x)
    up_left = random_crop_flip(x, torch.tensor([[0, 0], [0, 0]]), no)  # content moves down-right
    assert torch.equal(up_left[:, :, 4:, 4:], x[:, :, :-4, :-4])
    assert (up_left[:, :, :4] == 0).all()
    assert (up_left[:, :, :, :4] == 0).all()
    mixed = random_crop_flip(x, torch.tensor([[8, 2], [1, 8]]), torch.tensor([False, True]))
    assert torch.equal(mixed[0, :, :-4, 2:], x[0, :, 4:, :-2])  # shifted up 4, right 2
    assert (mixed[0, :, -4:] == 0).all()
    assert (mixed[0, :, :, :2] == 0).all()
    assert torch.equal(mixed[1], reference_crop_flip(x[1], 1, 8, True))
    flipped = random_crop_flip(x, torch.tensor([[4, 4], [4, 4]]), torch.tensor([True, True]))
    assert torch.equal(flipped, x.flip(3))


def test_loader_augmentation_is_a_padded_crop_and_flip() -> None:
    split = indexed_split(128)
    loader = BatchLoader(split, 50, "cpu", shuffle=True, augment=True, seed=0)
    flips, shifts = 0, set()
    for x, y in loader.epoch(0):
        for img, label in zip((x * 255).round().to(torch.uint8), y.tolist()):
            source = split.x[label]
            matches = [
                (top, left, flip)
                for top in range(9)
                for left in range(9)
                for flip in (False, True)
                if torch.equal(img, reference_crop_flip(source, top, left, flip))
            ]
            assert len(matches) == 1
            flips += matches[0][2]
            shifts.add(matches[0][:2])
    assert 40 < flips < 88
    assert len(shifts) > 40
