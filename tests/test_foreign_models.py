"""`dnr eval` on models from elsewhere: state dicts that do not fit, TorchScript, ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dnr.cli import main
from dnr.foreign import foreign_kind, load_foreign
from dnr.modelfile import load_model, state_mismatch
from dnr.models import create_model
from dnr.onnxgraph import OnnxImportError, load_onnx

pytest.importorskip("onnxscript")  # the exporter writes the ONNX files these tests read
onnx = pytest.importorskip("onnx")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _with_moved_batchnorm(name: str) -> torch.nn.Module:
    """A small model whose BN statistics are not the identity (an export folds them)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width=0.125).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_onnx_graph_gives_the_models_logits_and_input_gradients(arch, tmp_path, one_thread):
    from dnr.export.onnx import export_onnx

    model = _with_moved_batchnorm(arch)
    export_onnx(model, tmp_path / "m.onnx")
    graph = load_onnx(tmp_path / "m.onnx")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    ours, theirs = model(x), graph(x)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_theirs, grad_ours, rtol=1e-4, atol=1e-7)
    assert not any(p.requires_grad for p in graph.parameters())  # evaluated, never trained


def test_onnx_operator_outside_the_set_is_one_line(tmp_path, capsys) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("Softplus", ["input"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )
    path = tmp_path / "softplus.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxImportError, match="Softplus not supported"):
        load_onnx(path)
    assert main(["eval", str(path), "data.name=digits", "--subset", "8"]) == 2
    assert "Softplus not supported" in _one_error_line(capsys)


def test_foreign_kind_tells_torchscript_from_a_state_dict(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DNR_TRUST_MODEL_CODE", "1")
    model = create_model("vgg16", num_classes=10, width=0.125).eval()
    torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(str(tmp_path / "ts.pt"))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert foreign_kind(tmp_path / "ts.pt") == "torchscript"
    assert foreign_kind(tmp_path / "sd.pt") is None
    assert foreign_kind(tmp_path / "missing.onnx") is None
    loaded = load_foreign(tmp_path / "ts.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    loaded.describe((x * 255).to(torch.uint8))
    assert loaded.arch_config["num_classes"] == 10
    assert loaded.arch_config["input_size"] == 32


def test_torchscript_loads_only_when_trusted(tmp_path, monkeypatch, capsys) -> None:
    """TorchScript and .pt2 loaders may unpickle: refused unless the user trusts the file."""
    monkeypatch.delenv("DNR_TRUST_MODEL_CODE", raising=False)
    model = create_model("vgg16", num_classes=10, width=0.125).eval()
    torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(str(tmp_path / "ts.pt"))
    assert main(["eval", str(tmp_path / "ts.pt"), "data.name=digits", "--subset", "8"]) == 2
    err = _one_error_line(capsys)
    assert "may unpickle Python objects" in err
    assert "DNR_TRUST_MODEL_CODE=1" in err


def test_state_mismatch_names_the_first_differing_key_and_shapes() -> None:
    expected = create_model("vgg16", num_classes=10, width=0.125).state_dict()
    other = create_model("vgg16", num_classes=100, width=0.125).state_dict()
    assert state_mismatch(expected, dict(expected)) is None
    difference = state_mismatch(expected, other)
    assert difference is not None
    assert "classifier" in difference
    assert "(100," in difference
    assert "(10," in difference
    missing = {k: v for k, v in expected.items() if not k.startswith("features.0.")}
    assert "is missing from the checkpoint" in str(state_mismatch(expected, missing))
    extra = {**expected, "head.bias": torch.zeros(3)}
    assert state_mismatch(expected, extra) == (
        "the checkpoint has head.bias (3,), which the model lacks"
    )


@pytest.mark.parametrize(
    ("classes", "width", "fragment"),
    [
        ("100", "0.125", "in the checkpoint, (100,"),  # a wrong --num-classes
        ("10", "0.25", "in the checkpoint, (16,"),  # a wrong --width
    ],
)
def test_eval_of_a_checkpoint_that_does_not_fit_is_one_line_exit_2(
    tmp_path, capsys, classes, width, fragment
) -> None:
    model = create_model("vgg16", num_classes=10, width=0.125)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    argv = ["eval", "--model", "vgg16", "--num-classes", classes, "--width", width]
    assert main([*argv, "--weights", str(tmp_path / "w.pt"), "data.name=digits"]) == 2
    err = _one_error_line(capsys)
    assert "weights do not match model 'vgg16'" in err
    assert fragment in err


def test_torchscript_given_as_weights_says_how_to_evaluate_it(tmp_path, capsys) -> None:
    model = create_model("vgg16", num_classes=10, width=0.125).eval()
    torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(str(tmp_path / "ts.pt"))
    argv = ["eval", "--model", "vgg16", "--num-classes", "10", "--weights", str(tmp_path / "ts.pt")]
    assert main([*argv, "data.name=digits"]) == 2
    assert "is a TorchScript archive" in _one_error_line(capsys)


def _eval_json(target: Path | str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["eval", str(target), "--subset", "48", "--json", "--no-sanity", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_eval_of_the_runs_onnx_and_torchscript_equals_the_run(
    reference_dnr_run, tmp_path, capsys, one_thread, monkeypatch
) -> None:
    """The same images, the same attacks: each foreign copy scores what the run scores."""
    monkeypatch.setenv("DNR_TRUST_MODEL_CODE", "1")  # the test made the TorchScript/.pt2 files
    assert (
        main(
            [
                "export",
                str(reference_dnr_run),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    model = load_model(reference_dnr_run)
    size = model.arch_config["input_size"]
    example = torch.rand(2, 3, size, size)
    torch.jit.trace(model, example).save(str(tmp_path / "ts.pt"))
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(
        torch.export.export(model, (example,), dynamic_shapes=(batch,)), tmp_path / "m.pt2"
    )
    ours = _eval_json(reference_dnr_run, capsys)["results"]
    for foreign in ("m.onnx", "ts.pt", "m.pt2"):
        theirs = _eval_json(tmp_path / foreign, capsys, "data.name=digits")["results"]
        assert [r["name"] for r in theirs] == [r["name"] for r in ours]
        for a, b in zip(theirs, ours, strict=True):
            assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1 / 48 + 1e-9), foreign
        assert theirs[0]["accuracy"] == ours[0]["accuracy"]  # clean: the same predictions
