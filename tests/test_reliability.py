"""Reliability of what a run writes and reads: checksummed checkpoints and weights, the
previous-checkpoint fallback on resume, and loading that never runs code from a file."""

from __future__ import annotations

import ast
import builtins
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dnr.checkpoints import load_checkpoint, save_checkpoint, verify_checkpoint
from dnr.cli import main
from dnr.config import load_config
from dnr.modelfile import load_model, load_plain_weights, save_model
from dnr.models import create_model
from dnr.rundir import ArtifactError, RunDir
from dnr.training.writer import CHECKPOINT_VERSION, RunWriter
from helpers import tiny_overrides

SRC = Path(__file__).resolve().parents[1] / "src" / "dnr"


def _state(value: int) -> dict:
    return {"model": {"w": torch.full((64, 64), float(value))}, "epoch": value, "note": "x"}


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_sealed_and_plain_torch_load_still_reads_it(tmp_path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(3))
    assert verify_checkpoint(path) is True
    assert load_checkpoint(path)["epoch"] == 3
    # the checksum lives in the zip comment: any torch.load reads the file as before
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], _state(3)["model"]["w"])


@pytest.mark.parametrize("where", ["start", "tensor data", "central directory", "checksum"])
def test_a_flipped_byte_anywhere_is_a_one_line_error_naming_the_file(tmp_path, where) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(3))
    size = path.stat().st_size
    data = path.read_bytes()
    offset = {
        "start": 10,
        "tensor data": data.index(torch.full((64, 64), 3.0).numpy().tobytes()[:64]) + 100,
        "central directory": size - 75 - 2 - 30,
        "checksum": size - 5,
    }[where]
    _flip_byte(path, offset)
    with pytest.raises(ArtifactError) as err:
        load_checkpoint(path)
    assert "checksum mismatch" in _one_line_naming(err, path)


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_a_truncated_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, keep) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(3))
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:cut])
    with pytest.raises(ArtifactError) as err:
        load_checkpoint(path)
    _one_line_naming(err, path)


def test_checkpoints_written_before_checksums_still_load(tmp_path) -> None:
    path = tmp_path / "old.pt"
    torch.save(_state(5), path)  # what torch-dnr wrote before checksums
    assert verify_checkpoint(path) is False
    assert load_checkpoint(path)["epoch"] == 5


def test_save_checkpoint_keeps_the_replaced_file_as_previous(tmp_path) -> None:
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint(last, _state(1), previous=previous)
    assert not previous.exists()
    save_checkpoint(last, _state(2), previous=previous)
    save_checkpoint(last, _state(3), previous=previous)
    assert load_checkpoint(last)["epoch"] == 3
    assert load_checkpoint(previous)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_rotation_without_hard_links_renames(tmp_path, monkeypatch) -> None:
    def no_links(*_args, **_kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint(last, _state(1), previous=previous)
    save_checkpoint(last, _state(2), previous=previous)
    assert load_checkpoint(last)["epoch"] == 2
    assert load_checkpoint(previous)["epoch"] == 1


# --------------------------------------------------------------------------- model.safetensors


@pytest.fixture
def saved_model(tmp_path) -> Path:
    model = create_model("vgg16", num_classes=10, width=0.0625)
    save_model(tmp_path / "run", model, {"classes": [str(i) for i in range(10)]})
    return tmp_path / "run"


def test_damaged_weights_are_a_one_line_error(saved_model) -> None:
    weights = RunDir(saved_model).model_weights
    load_model(saved_model)  # intact: loads
    _flip_byte(weights, weights.stat().st_size - 7)  # inside the last tensor's bytes
    with pytest.raises(ArtifactError) as err:
        load_model(saved_model)
    assert "checksum mismatch" in _one_line_naming(err, weights)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError) as err:
        load_model(saved_model)
    assert "truncated or damaged" in _one_line_naming(err, weights)


def test_safetensors_from_elsewhere_load_without_a_checksum(saved_model, tmp_path) -> None:
    model = load_model(saved_model)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    loaded = load_plain_weights("vgg16", plain, num_classes=10, width=0.0625)
    assert torch.equal(loaded.features[0].weight, model.features[0].weight)
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(ArtifactError) as err:
        load_plain_weights("vgg16", plain, num_classes=10, width=0.0625)
    _one_line_naming(err, plain)


def test_dnr_eval_of_a_damaged_run_exits_2_naming_the_file(saved_model, capsys) -> None:
    weights = RunDir(saved_model).model_weights
    _flip_byte(weights, weights.stat().st_size - 7)
    assert main(["eval", str(saved_model), "--subset", "8", "--no-sanity"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err
    assert "checksum mismatch" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- RunWriter


def _cfg():
    return load_config(None, tiny_overrides(train__epochs=2))


def _resume_state(cfg, epochs_done: int) -> dict:
    return {"config": cfg.to_dict(), "state": {"epochs_done": epochs_done}, "x": epochs_done}


def test_resume_falls_back_to_the_previous_checkpoint_with_a_warning(tmp_path, capsys) -> None:
    cfg = _cfg()
    writer = RunWriter(tmp_path / "run")
    writer.save_last(_resume_state(cfg, 1))
    writer.save_last(_resume_state(cfg, 2))
    run = RunDir(tmp_path / "run")
    assert load_checkpoint(run.previous_checkpoint)["x"] == 1
    assert writer.open(cfg, resume=True)["x"] == 2
    assert writer.warnings == []

    _flip_byte(run.last_checkpoint, 200)
    logged: list[str] = []
    reader = RunWriter(tmp_path / "run", log=logged.append)
    state = reader.open(cfg, resume=True)
    assert state["x"] == 1
    assert state["version"] == CHECKPOINT_VERSION
    (warning,) = reader.warnings
    assert str(run.last_checkpoint) in warning
    assert "checksum mismatch" in warning
    assert str(run.previous_checkpoint) in warning
    assert "after epoch 1" in warning
    assert logged == [f"warning: {warning}"]
    # the next save replaces the damaged last.pt without rotating it into previous.pt
    reader.save_last(_resume_state(cfg, 2))
    assert load_checkpoint(run.previous_checkpoint)["x"] == 1
    assert load_checkpoint(run.last_checkpoint)["x"] == 2

    # without a log callable, the writing process prints the warning to stderr
    _flip_byte(run.last_checkpoint, 200)
    capsys.readouterr()
    RunWriter(tmp_path / "run").open(cfg, resume=True)
    assert "warning:" in capsys.readouterr().err
    RunWriter(tmp_path / "run", enabled=False).open(cfg, resume=True)  # other ranks: silent
    assert capsys.readouterr().err == ""


def test_resume_with_last_missing_uses_previous(tmp_path) -> None:
    cfg = _cfg()
    writer = RunWriter(tmp_path / "run")
    writer.save_last(_resume_state(cfg, 1))
    writer.save_last(_resume_state(cfg, 2))
    RunDir(tmp_path / "run").last_checkpoint.unlink()  # e.g. killed between two renames
    reader = RunWriter(tmp_path / "run", log=lambda _: None)
    assert reader.open(cfg, resume=True)["x"] == 1
    assert "is missing" in reader.warnings[0]


def test_resume_with_no_good_checkpoint_is_one_clear_error(tmp_path) -> None:
    cfg = _cfg()
    writer = RunWriter(tmp_path / "run")
    writer.save_last(_resume_state(cfg, 1))
    run = RunDir(tmp_path / "run")
    _flip_byte(run.last_checkpoint, 200)
    with pytest.raises(ArtifactError) as err:
        writer.open(cfg, resume=True)
    assert "no previous checkpoint to fall back to" in _one_line_naming(err, run.last_checkpoint)
    writer.save_last(_resume_state(cfg, 2))  # rotates the damaged file into previous.pt
    _flip_byte(run.last_checkpoint, 200)
    with pytest.raises(ArtifactError) as err:
        writer.open(cfg, resume=True)
    message = _one_line_naming(err, run.previous_checkpoint)
    assert str(run.last_checkpoint) in message
    assert "fallback is unusable" in message


def test_a_disabled_writer_reads_but_never_writes(tmp_path) -> None:
    cfg = _cfg()
    RunWriter(tmp_path / "run").save_last(_resume_state(cfg, 1))
    other = RunWriter(tmp_path / "run", enabled=False)
    other.save_last(_resume_state(cfg, 2))
    other.start(cfg)
    assert other.clear() == []
    assert other.open(cfg, resume=True)["x"] == 1
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", "last.pt"]


@pytest.mark.slow
def test_a_resumed_run_with_a_damaged_last_checkpoint_ends_as_an_uninterrupted_one(
    tmp_path, capsys
) -> None:
    overrides = tiny_overrides(
        train__epochs=2, sparsity__method="dnr", sparsity__density=0.3, data__subset=64
    )
    for name in ("straight", "damaged"):
        argv = ["train", "--out", str(tmp_path / name), "--quiet", "--no-eval", *overrides]
        assert main(argv) == 0
    damaged = RunDir(tmp_path / "damaged")
    # the run ended: make it look interrupted after epoch 2's checkpoint, with that
    # checkpoint damaged, so the resume must redo epoch 2 from previous.pt (epoch 1)
    damaged.model_weights.unlink()
    _flip_byte(damaged.last_checkpoint, 300)
    capsys.readouterr()
    argv = ["train", "--resume", "--out", str(damaged.path), "--quiet", "--no-eval", *overrides]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert str(damaged.previous_checkpoint) in err
    a = load_model(tmp_path / "straight").state_dict()
    b = load_model(damaged.path).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_checkpoint(damaged.last_checkpoint)["state"]["epochs_done"] == 2


def _full_disk_save(real, fail_on: int, name: str = ""):
    """A ``torch.save`` that writes part of the file and then fails as torch does when the
    disk fills up (a RuntimeError, not an OSError), on its ``fail_on``-th call for a file
    called ``name`` (any file by default; writes go to ``.NAME.*.tmp``)."""
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        hit = Path(f).name.startswith(f".{name}")
        calls["n"] += hit
        if hit and calls["n"] == fail_on:
            Path(f).write_bytes(b"PK\x03\x04 half an archive")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
        return real(obj, f, *args, **kwargs)

    return save


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_says_so(
    tmp_path, monkeypatch
) -> None:
    path, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint(path, _state(1), previous=previous)
    monkeypatch.setattr(torch, "save", _full_disk_save(torch.save, fail_on=1))
    with pytest.raises(ArtifactError, match="cannot write the checkpoint") as err:
        save_checkpoint(path, _state(2), previous=previous)
    message = _one_line_naming(err, path)
    assert "unexpected pos 576" in message
    assert "MiB free there" in message
    assert "--resume" in message
    assert load_checkpoint(path)["epoch"] == 1  # untouched, not rotated
    assert not previous.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


@pytest.mark.slow
def test_a_run_whose_checkpoint_write_fails_stops_in_one_line_and_resumes_to_the_same_bits(
    tmp_path, capsys, monkeypatch
) -> None:
    overrides = tiny_overrides(
        train__epochs=2, sparsity__method="dnr", sparsity__density=0.3, data__subset=64
    )
    argv = ["--quiet", "--no-eval", *overrides]
    assert main(["train", "--out", str(tmp_path / "straight"), *argv]) == 0
    with monkeypatch.context() as patch:  # the disk fills up as epoch 2's last.pt is written
        patch.setattr(torch, "save", _full_disk_save(torch.save, fail_on=2, name="last.pt"))
        capsys.readouterr()
        assert main(["train", "--out", str(tmp_path / "full"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "cannot write the checkpoint" in err
    assert str(RunDir(tmp_path / "full").last_checkpoint) in err
    full = RunDir(tmp_path / "full")
    assert load_checkpoint(full.last_checkpoint)["state"]["epochs_done"] == 1
    assert main(["train", "--resume", "--out", str(full.path), *argv]) == 0
    a = load_model(tmp_path / "straight").state_dict()
    b = load_model(full.path).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _malicious(path: Path, marker: Path, *, sealed: bool) -> Path:
    state = {"version": CHECKPOINT_VERSION, "model": {"w": _Payload(marker)}}
    if sealed:  # a valid checksum: the checksum is no signature, weights_only still refuses
        save_checkpoint(path, state)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    assert not marker.exists()
    return path


@pytest.mark.parametrize("sealed", [False, True])
def test_load_checkpoint_refuses_a_pickle_that_runs_code(tmp_path, sealed) -> None:
    marker = tmp_path / "PWNED"
    path = _malicious(tmp_path / "evil.pt", marker, sealed=sealed)
    with pytest.raises(ArtifactError) as err:
        load_checkpoint(path)
    message = _one_line_naming(err, path)
    assert "refused to load" in message
    assert "nothing in it was run" in message
    assert "weights_only" not in message  # no advice to turn the protection off
    assert not marker.exists()


def test_dnr_train_resume_refuses_a_malicious_last_checkpoint(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    overrides = tiny_overrides(train__epochs=1)
    RunWriter(out).start(load_config(None, overrides))  # config.yaml, as a started run has
    _malicious(RunDir(out).last_checkpoint, marker, sealed=True)
    assert main(["train", "--resume", "--out", str(out), "--quiet", *overrides]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err
    assert str(RunDir(out).last_checkpoint) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_dnr_eval_refuses_malicious_weights(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    path = _malicious(tmp_path / "weights.pt", marker, sealed=False)
    argv = ["eval", "--model", "vgg16", "--num-classes", "10", "--weights", str(path)]
    assert main([*argv, "--subset", "8"]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err
    assert str(path) in err
    assert "Traceback" not in err
    assert not marker.exists()
    # a run directory whose model.safetensors is really a pickle: not readable either
    run = tmp_path / "run"
    save_model(run, create_model("vgg16", num_classes=10, width=0.0625), {})
    _malicious(RunDir(run).model_weights, marker, sealed=False)
    assert main(["eval", str(run), "--subset", "8"]) == 2
    assert str(RunDir(run).model_weights) in capsys.readouterr().err
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_code_path_unpickles_arbitrary_objects() -> None:
    """torch.load only with weights_only=True, np.load never with allow_pickle=True, and
    pickle only in the restricted unpickler that reads CIFAR's data files."""
    torch_loads = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in {"pickle", "_pickle", "cPickle", "dill", "joblib"}:
                    assert where == "data/safety.py", f"{where} imports {name}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                imported = {alias.name for alias in node.names}
                assert "load" not in imported, f"{where}: from torch import load"
        for call in _calls(tree):
            name = _dotted(call.func)
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                torch_loads += 1
                value = keywords.get("weights_only")
                unsafe = f"{where}:{call.lineno}: torch.load without weights_only=True"
                assert isinstance(value, ast.Constant), unsafe
                assert value.value is True, unsafe
            if name in {"np.load", "numpy.load"}:
                value = keywords.get("allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and not value.value), (
                    f"{where}:{call.lineno}: np.load with allow_pickle"
                )
            if name.endswith("Unpickler") or name in {"pickle.load", "pickle.loads"}:
                assert where == "data/safety.py", f"{where}:{call.lineno}: {name}"
    assert torch_loads >= 1  # the scan saw the one in checkpoints.py
    safety = (SRC / "data" / "safety.py").read_text()
    assert "def find_class" in safety
    assert "refusing to load global" in safety
