"""dnr export: sparse storage (exact, 12x at 5 %), ONNX parity, compact dispatch, errors.

No training: each run directory is a model with random masks and BatchNorm statistics,
saved the way the trainer saves it (dnr.modelfile.save_model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dnr
from dnr.cli import main
from dnr.export import ExportError, export_run
from dnr.modelfile import load_model, read_model_meta, save_model
from dnr.registry import EXPORT_FORMATS, UnknownNameError
from dnr.rundir import ArtifactError, RunDir
from dnr.sparsity import ChannelMasking, Masking
from dnr.sparsity.layers import prunable_parameters
from dnr.storage import decode_rows, encode_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_buffers(model: nn.Module, seed: int) -> None:
    """Non-trivial BN parameters and statistics, so dense tensors are checked for real."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
                module.running_mean.copy_(
                    torch.randn(module.running_mean.shape, generator=generator)
                )
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator))
                module.num_batches_tracked.fill_(123)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))


def make_run(
    path: Path, arch: str = "vgg16", width: float = 0.25, density: float | None = 0.05
) -> nn.Module:
    """A run directory as the trainer leaves it: model.safetensors + model.json."""
    model = dnr.create_model(arch, num_classes=10, width=width)
    _randomize_buffers(model, 1)
    sparsity: dict = {"method": "dense", "mode": "none"}
    if density is not None:
        Masking(model, None, density=density, generator=torch.Generator().manual_seed(0))
        sparsity = {"method": "static", "mode": "weight", "target_density": density}
    meta = {
        "classes": [str(i) for i in range(10)],
        "dataset": {"name": "digits", "root": "data", "train": [], "test": None},
        "sparsity": sparsity,
    }
    save_model(path, model, meta)
    return model.eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, to compare -0.0 / NaN payloads exactly."""
    if t.is_floating_point():
        return t.contiguous().view(
            {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        )
    return t


# ----------------------------------------------------------------------------- sparse


@pytest.mark.parametrize(("arch", "width"), [("vgg16", 0.25), ("resnet18", 0.125)])
def test_sparse_round_trip_is_exact(tmp_path, arch, width) -> None:
    model = make_run(tmp_path / "run", arch, width)
    result = export_run(tmp_path / "run", "sparse", tmp_path / "out")
    assert result.files == [
        RunDir(tmp_path / "out").model_weights,
        RunDir(tmp_path / "out").model_meta,
    ]
    original = model.state_dict()
    restored = load_model(tmp_path / "out").state_dict()
    prunable = set(prunable_parameters(model))
    assert list(restored) == list(original)
    for name, value in original.items():
        back = restored[name]
        assert (back.dtype, back.shape) == (value.dtype, value.shape), name
        if name in prunable:
            # every value bit for bit; a zero comes back +0.0 (masking by multiply left
            # -0.0 where a weight was negative, and signs of zeros are not stored)
            assert torch.equal(_bits(back), _bits(value + 0.0)), name
            assert not torch.signbit(back[back == 0]).any()
        else:
            assert torch.equal(_bits(back), _bits(value)), name  # BN, biases, normalize
    meta = read_model_meta(tmp_path / "out")
    storage = meta["storage"]
    assert storage["format"] == "sparse"
    assert set(storage["tensors"]) == prunable
    for name, info in storage["tensors"].items():
        assert info["shape"] == list(original[name].shape)
        assert info["index_dtype"] == "int16"
        assert info["dtype"] == "float32"
        assert info["nnz"] == int(torch.count_nonzero(original[name]))
    assert set(storage["dense"]) == set(original) - prunable
    assert meta["export"] == {"format": "sparse", "source": str(tmp_path / "run")}
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["dataset"]["name"] == "digits"
    assert meta["sparsity"]["mode"] == "weight"  # still the source's, for dnr report


def test_sparse_restores_every_bit_when_zeros_are_positive(tmp_path) -> None:
    model = make_run(tmp_path / "run", "vgg16", 0.125)
    with torch.no_grad():
        for weight in prunable_parameters(model).values():
            weight.add_(0.0)  # -0.0 -> +0.0, nothing else changes
    save_model(tmp_path / "run", model, read_model_meta(tmp_path / "run"))
    export_run(tmp_path / "run", "sparse", tmp_path / "out")
    restored = load_model(tmp_path / "out").state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(_bits(restored[name]), _bits(value)), name


def test_sparse_file_is_12x_smaller_at_density_005(tmp_path) -> None:
    make_run(tmp_path / "run", "vgg16", 0.25, density=0.05)
    result = export_run(tmp_path / "run", "sparse", tmp_path / "out")
    dense = RunDir(tmp_path / "run").model_weights.stat().st_size
    sparse = RunDir(tmp_path / "out").model_weights.stat().st_size
    assert dense / sparse >= 12, (dense, sparse)
    note = next(note for note in result.notes if "x smaller" in note)
    quoted = int(note.split(" against ")[1].split(" ")[0].replace(",", ""))
    assert 0 <= dense - quoted <= 200  # the run's file also carries its checksum header


def test_dense_weights_stay_dense_where_rows_would_be_larger(tmp_path) -> None:
    make_run(tmp_path / "run", "vgg16", 0.125, density=None)
    export_run(tmp_path / "run", "sparse", tmp_path / "out")
    meta = read_model_meta(tmp_path / "out")
    assert meta["storage"]["tensors"] == {}
    dense = RunDir(tmp_path / "run").model_weights.stat().st_size
    assert RunDir(tmp_path / "out").model_weights.stat().st_size <= dense
    assert torch.equal(
        load_model(tmp_path / "out").features[0].weight,
        load_model(tmp_path / "run").features[0].weight,
    )


def test_rows_codec_long_rows_nan_and_empty_rows() -> None:
    weight = torch.zeros(3, 40_000)
    weight[0, 39_999] = 1.5
    weight[2, [0, 7, 33_000]] = torch.tensor([float("nan"), -2.0, 3.0])
    parts = encode_rows(weight)
    assert parts["col_indices"].dtype == torch.int32  # rows longer than 32767
    assert parts["row_counts"].tolist() == [1, 0, 3]
    back = decode_rows(parts["row_counts"], parts["col_indices"], parts["values"], weight.shape)
    assert torch.equal(_bits(back), _bits(weight))
    half = torch.randn(4, 2, 3, 3).half()
    half[half.abs() < 0.5] = 0
    parts = encode_rows(half)
    assert parts["values"].dtype == torch.float16
    assert parts["col_indices"].dtype == torch.int16
    back = decode_rows(parts["row_counts"], parts["col_indices"], parts["values"], half.shape)
    assert torch.equal(_bits(back), _bits(half))


def test_damaged_sparse_storage_is_a_one_line_error(tmp_path) -> None:
    make_run(tmp_path / "run", "vgg16", 0.125)
    export_run(tmp_path / "run", "sparse", tmp_path / "out")
    meta_path = RunDir(tmp_path / "out").model_meta
    meta = json.loads(meta_path.read_text())
    meta["storage"]["tensors"]["features.0.weight"]["shape"] = [3, 3, 3, 3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="features.0.weight: row_counts has shape"):
        load_model(tmp_path / "out")
    meta["storage"]["format"] = "zip"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unknown storage format 'zip'"):
        load_model(tmp_path / "out")


def test_cli_export_sparse_then_eval(tmp_path, capsys) -> None:
    make_run(tmp_path / "run", "vgg16", 0.0625, density=0.2)
    out = tmp_path / "sparse"
    assert main(["export", str(tmp_path / "run"), "--format", "sparse", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    size = RunDir(out).model_weights.stat().st_size
    assert f"wrote {RunDir(out).model_weights} ({size:,} bytes)" in printed
    assert "x smaller" in printed
    argv = ["--subset", "16", "--no-sanity", "--json", "--quiet"]
    assert main(["eval", str(out), *argv]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert RunDir(out).eval_json.is_file()  # written next to the exported model
    assert main(["eval", str(tmp_path / "run"), *argv]) == 0
    source = json.loads(capsys.readouterr().out)
    assert [r["accuracy"] for r in exported["results"]] == [
        r["accuracy"] for r in source["results"]
    ]
    # an earlier export is replaced, including what was evaluated into it
    assert main(["export", str(tmp_path / "run"), "--format", "sparse", "--out", str(out)]) == 0
    assert not RunDir(out).eval_json.exists()
    assert RunDir(out).model_weights.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sparse"]  # no temp dirs


# ----------------------------------------------------------------------------- onnx


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_onnx_matches_pytorch_for_batches_1_and_3(tmp_path, arch) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = make_run(tmp_path / "run", arch, 0.25)
    path = tmp_path / f"{arch}.onnx"
    result = export_run(tmp_path / "run", "onnx", path)
    assert result.files == [path]
    assert path.is_file()
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input"
    assert inp.shape[1:] == [3, 32, 32]
    assert not isinstance(inp.shape[0], int)  # a symbolic batch axis
    generator = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        x = torch.rand(batch, 3, 32, 32, generator=generator)
        with torch.no_grad():
            expected = model(x)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        assert got.shape == (batch, 10)
        assert float((torch.from_numpy(got) - expected).abs().max()) <= 1e-4


def test_onnx_without_the_package_names_the_extra(tmp_path, monkeypatch, capsys) -> None:
    import dnr.export.onnx as onnx_format

    make_run(tmp_path / "run", "vgg16", 0.0625)
    monkeypatch.setattr(onnx_format, "_importable", lambda name: name != "onnx")
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'torch-dnr[export]'" in err
    assert "onnx package" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- compact


def _channel_run(path: Path) -> dict[str, list[int]]:
    """A channel-mode run directory: a masked vgg16 and its kept channels in model.json."""
    torch.manual_seed(0)
    model = dnr.create_model("vgg16", num_classes=10, width=0.125)
    masking = ChannelMasking(model, None, density=0.2, generator=torch.Generator().manual_seed(0))
    kept = masking.kept_channels()
    meta = {
        "classes": [str(i) for i in range(10)],
        "dataset": {"name": "digits"},
        "sparsity": {"method": "dnr", "mode": "channel", "kept_channels": kept},
    }
    save_model(path, model.eval(), meta)
    return kept


def test_compact_export_writes_the_narrow_model_with_equal_logits(tmp_path) -> None:
    kept = _channel_run(tmp_path / "run")
    result = export_run(tmp_path / "run", "compact", tmp_path / "out")
    assert "fewer" in result.notes[0]
    meta = read_model_meta(tmp_path / "out")
    assert meta["architecture"]["channels"] == {n: len(i) for n, i in kept.items()}
    assert meta["sparsity"]["mode"] == "none"
    assert "kept_channels" not in meta["sparsity"]
    assert meta["export"] == {"format": "compact", "source": str(tmp_path / "run")}
    assert meta["classes"] == [str(i) for i in range(10)]
    narrow, full = load_model(tmp_path / "out"), load_model(tmp_path / "run")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert (narrow(x) - full(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())


def test_compact_needs_a_channel_mode_run(tmp_path, capsys) -> None:
    make_run(tmp_path / "run", "vgg16", 0.0625)
    argv = ["export", str(tmp_path / "run"), "--format", "compact", "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "compact export needs a channel-mode run (sparsity.granularity=channel); "
        "use --format sparse"
    )
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["{tmp}/missing", "--format", "sparse", "--out", "{tmp}/o"], "run directory not found"),
        (["{tmp}/empty", "--format", "sparse", "--out", "{tmp}/o"], "model.json is missing"),
        (["{tmp}/run", "--format", "sparse", "--out", "{tmp}/x.onnx"], "names a file"),
        (["{tmp}/run", "--format", "sparse", "--out", "{tmp}/taken"], "not written by dnr export"),
        (["{tmp}/run", "--format", "sparse", "--out", "{tmp}/run"], "would replace the run"),
        (["{tmp}/run", "--format", "sparse", "--out", "{tmp}"], "would replace the run"),
        (["{tmp}/run", "--format", "onnx", "--out", "{tmp}/m.pt"], "the .onnx file to write"),
        (["{tmp}/run", "--format", "onnx", "--out", "{tmp}/dir.onnx"], "is a directory"),
    ],
)
def test_export_errors_are_one_line(tmp_path, argv, fragment, capsys) -> None:
    make_run(tmp_path / "run", "vgg16", 0.0625)
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "dir.onnx").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_unknown_format(tmp_path, capsys) -> None:
    make_run(tmp_path / "run", "vgg16", 0.0625)
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path / "run"), "--format", "zip", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "invalid choice: 'zip' (choose from compact, onnx, sparse)" in capsys.readouterr().err
    with pytest.raises(UnknownNameError, match="unknown export format 'zip'"):
        export_run(tmp_path / "run", "zip", tmp_path / "o")
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "run"), "--format", "sparse"])  # --out is required
    assert EXPORT_FORMATS.names() == ["compact", "onnx", "sparse"]


def test_export_help_lists_the_formats(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for name in EXPORT_FORMATS.names():
        assert f"  {name} " in out
    assert "pip install 'torch-dnr[export]'" in out


def test_export_error_is_an_artifact_error() -> None:
    assert issubclass(ExportError, ArtifactError)


# ----------------------------------------------------------------------------- report


@pytest.fixture
def quick_latency(monkeypatch) -> None:
    """One timed pass at batches 1 and 4: the report's layout, not a benchmark."""
    import dnr.report

    monkeypatch.setattr(dnr.report, "LATENCY_REPEATS", {1: 1, 4: 1})


def test_report_cost_section(tmp_path, capsys, quick_latency) -> None:
    make_run(tmp_path / "run", "vgg16", 0.125, density=0.05)
    assert main(["report", str(tmp_path / "run"), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "## Cost" in out
    assert "latency b=1" not in out
    assert "not measured" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "dense architecture" in rows
    assert "nonzero weights" in rows
    assert "| 1.0x |" in rows["dense architecture"]
    assert main(["report", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "latency b=1" in out
    assert "latency b=4" in out
    assert " ms |" in out
    assert "Irregular zeros do not speed up dense kernels" in out


def test_report_has_a_compact_row_for_channel_runs(tmp_path, quick_latency) -> None:
    from dnr.report import summarize_run

    _channel_run(tmp_path / "run")
    text = summarize_run(tmp_path / "run", latency=True)
    (row,) = [line for line in text.splitlines() if line.startswith("| compact")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3].endswith("x")
    assert float(cells[3][:-1]) > 3
    assert cells[4].endswith(" ms")
    assert cells[5].endswith(" ms")


def test_a_sparse_export_can_start_another_run(tmp_path) -> None:
    """``train.init_from`` reads any model directory, whatever its storage layout."""
    from dnr.training.setup import load_init_weights

    source = make_run(tmp_path / "run", "vgg16", 0.0625)
    export_run(tmp_path / "run", "sparse", tmp_path / "sparse")
    target = dnr.create_model("vgg16", num_classes=10, width=0.0625)
    load_init_weights(target, tmp_path / "sparse")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_an_export_killed_half_way_is_redone_by_the_same_command(tmp_path) -> None:
    """SIGKILL leaves the temp directories of the swap behind (never a half-written --out):
    the repeated command removes them and writes the export whole."""
    make_run(tmp_path / "run", "vgg16", 0.0625, density=0.2)
    out = tmp_path / "sparse"
    export_run(tmp_path / "run", "sparse", out)
    reference = RunDir(out).model_weights.read_bytes()
    # killed after moving the earlier export aside, before the new one was swapped in
    (tmp_path / ".sparse.k1k1k1k1.export").mkdir()
    (tmp_path / ".sparse.k1k1k1k1.export" / "model.json").write_text("{")
    (tmp_path / ".sparse.k2k2k2k2.old").mkdir()
    (tmp_path / "sparse").rename(tmp_path / ".sparse.k2k2k2k2.old" / "sparse")
    # another export's (sparse.v2, another --out): not this command's to touch
    (tmp_path / ".sparse.v2.k3k3k3k3.export").mkdir()
    export_run(tmp_path / "run", "sparse", out)
    assert RunDir(out).model_weights.read_bytes() == reference
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".sparse.v2.k3k3k3k3.export", "run", "sparse"]
