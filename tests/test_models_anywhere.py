"""Any model in the CLI: WRN-28-10/34-10, ``package.module:callable`` and ``timm:`` factories,
any input size, channel groups derived from the traced graph (equal to the hand-written ones),
and channel mode + compact export beyond the built-ins.

Every test on torchvision/timm has a twin on ``factories:tiny_net`` (tests/factories.py),
which runs everywhere.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dnr
from dnr.cli import main
from dnr.config import ConfigError, load_config
from dnr.export import export_run
from dnr.export.compact import compact_model
from dnr.modelfile import load_model, read_model_meta, save_model
from dnr.models import ForeignModel, channel_groups, create_model, derive_channel_groups
from dnr.models.channels import ChannelGroup
from dnr.sparsity import ChannelMasking
from dnr.sparsity.layers import prunable_parameters
from helpers import optional_import, tiny_overrides

TINY = "factories:tiny_net"
TV_RESNET18 = "torchvision.models:resnet18"

#: built-ins with hand-written groups, at widths small enough for a unit test
DECLARED = [
    ("vgg16", 0.0625, 32),
    ("vgg16", 0.0625, 64),
    ("resnet18", 0.125, 32),
    ("wrn28_10", 0.1, 32),
    ("wrn34_10", 0.1, 32),
]


@pytest.fixture(autouse=True)
def _trust_model_code(monkeypatch) -> None:
    """These tests rebuild their own factory-named runs from model.json (the trust opt-in);
    test_a_factory_named_in_a_model_json_is_not_imported_without_trust unsets it."""
    monkeypatch.setenv("DNR_TRUST_MODEL_CODE", "1")


def _needs(name: str) -> None:
    """Skip a test on a torchvision/timm model where that extra does not import."""
    if name.startswith("torchvision"):
        optional_import("torchvision")
    elif name.startswith("timm:"):
        optional_import("timm")


def _build(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    width = kwargs.pop("width", 0.1 if name.startswith("wrn") else 1.0)
    return create_model(name, num_classes=10, width=width, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ WideResNet


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), [("wrn28_10", 36_479_194), ("wrn34_10", 46_160_474)])
def test_wrn_has_the_reference_parameter_count(name, params) -> None:
    """RobustBench's WRN-28-10 (36.5 M) and TRADES' WRN-34-10 (46.2 M) on CIFAR-10."""
    model = create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.in_features == 640


def test_wrn_width_multiplies_every_stage_and_keeps_the_reference_key_names() -> None:
    model = _build("wrn28_10", width=0.1)
    assert model.conv1.out_channels == 2  # 16 x 0.1, rounded
    stages = [model.block1, model.block2, model.block3]
    assert [s.layer[0].conv2.out_channels for s in stages] == [16, 32, 64]
    assert [len(s.layer) for s in stages] == [4, 4, 4]
    assert len(_build("wrn34_10").block1.layer) == 5
    keys = set(model.state_dict())
    assert {"block1.layer.0.convShortcut.weight", "block2.layer.3.bn2.running_var"} <= keys
    assert "block1.layer.1.convShortcut.weight" not in keys  # identity shortcut after the first


# ------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize(
    ("name", "size"), [("vgg16", 48), ("vgg16", 96), ("resnet18", 40), ("wrn28_10", 24)]
)
def test_built_ins_take_other_input_sizes(name, size) -> None:
    model = _build(name, width=0.0625 if name == "vgg16" else 0.1, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 10)
    assert model.arch_config["input_size"] == size


def test_vgg_refuses_images_its_pools_would_erase() -> None:
    with pytest.raises(ValueError, match="at least 32 for VGG"):
        create_model("vgg16", num_classes=10, input_size=16)


# ------------------------------------------------------------------- derived channel groups


@pytest.mark.parametrize(("name", "width", "size"), DECLARED)
def test_derived_groups_equal_the_hand_written_ones(name, width, size) -> None:
    model = _build(name, width=width, input_size=size)
    declared = model.channel_groups()
    assert declared
    assert derive_channel_groups(model) == declared


def test_derived_groups_leave_channels_a_residual_add_couples() -> None:
    model = _build(TINY)
    assert channel_groups(model) == [
        ChannelGroup("net.conv1", "net.bn1", ("net.conv2",)),
        ChannelGroup("net.block_a", "net.bn_a", ("net.block_b",)),
    ]


def test_torchvision_resnet18_groups_are_the_blocks_inner_channels() -> None:
    _needs(TV_RESNET18)
    groups = channel_groups(_build(TV_RESNET18))
    blocks = [f"net.layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert groups == [ChannelGroup(f"{b}.conv1", f"{b}.bn1", (f"{b}.conv2",)) for b in blocks]


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_a_model_without_groups_says_why_channel_mode_cannot_run() -> None:
    with pytest.raises(ValueError, match="does not declare channel groups.*cannot trace"):
        channel_groups(_Branchy())
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="does not declare channel groups.*no Conv2d"):
        channel_groups(plain)


# -------------------------------------------------------------------------- foreign models


def test_a_factory_model_takes_01_images_and_rebuilds_from_its_arch_config() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model = _build(TINY, input_size=40, mean=mean, std=std, base=4).eval()
    assert isinstance(model, ForeignModel)
    assert next(iter(model.children())) is model.normalize
    assert model.arch_config == dict(
        name=TINY, num_classes=10, input_size=40, width=1.0, mean=list(mean), std=list(std), base=4
    )
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(model(x), model.net(normalized), rtol=0, atol=0)
    rebuilt = create_model(**model.arch_config)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
    assert model.net.conv1.out_channels == 4  # model.kwargs reached the factory


def test_factory_names_keep_their_case_and_resolve_through_the_registry() -> None:
    assert TINY in dnr.registry.MODELS
    assert "factories:TINY_NET" not in dnr.registry.MODELS
    assert "factories:TinyNet" in dnr.registry.MODELS  # a class is a factory too
    cfg = load_config(None, tiny_overrides(model__name="factories:TinyNet", model__width=1.0))
    assert cfg.model.name == "factories:TinyNet"
    assert load_config(None, tiny_overrides(model__name="VGG16")).model.name == "vgg16"


def test_an_unknown_name_lists_the_built_ins_and_the_factory_forms() -> None:
    expected = (
        r"choose one of resnet18, vgg16, wrn28_10, wrn34_10, package.module:callable, timm:<name>"
    )
    with pytest.raises(ConfigError, match=expected):
        load_config(None, tiny_overrides(model__name="alexnet"))
    with pytest.raises(ValueError, match=expected):
        create_model("alexnet", num_classes=10)


def test_model_kwargs_are_checked_against_the_factory_signature() -> None:
    base = tiny_overrides(model__name=TINY, model__width=1.0)
    with pytest.raises(ConfigError, match="model.kwargs.depth: model factories:tiny_net has no"):
        load_config(None, [*base, "model.kwargs={depth: 3}"])
    assert load_config(None, [*base, "model.kwargs={base: 2}"]).model.kwargs == {"base": 2}


@pytest.mark.parametrize(
    ("name", "extra", "fragments"),
    [
        ("factories:nope", [], ["model.name", "'factories:nope'", "no attribute"]),
        ("no_such_module_xyz:net", [], ["'no_such_module_xyz:net'", "cannot import"]),
        ("factories:broken_net", [], ["'factories:broken_net'", "this factory is broken"]),
        ("factories:not_a_net", [], ["'factories:not_a_net'", "not a torch.nn.Module"]),
        (TINY, ["model.width=0.5"], [f"'{TINY}'", "model.width"]),
        ("timm:no_such_net", [], ["'timm:no_such_net'", "timm"]),
    ],
)
def test_a_bad_factory_is_one_line_and_exit_2(tmp_path, capsys, name, extra, fragments) -> None:
    argv = ["train", "--out", str(tmp_path / "r"), "--quiet"]
    argv += [*tiny_overrides(model__name=name, model__width=1.0), *extra]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "r" / "model.json").exists()


def test_a_factory_that_cannot_take_the_images_fails_in_one_line() -> None:
    assert create_model(TINY, num_classes=10, input_size=4).arch_config["input_size"] == 4
    with pytest.raises(ValueError, match="'factories:tiny_net' cannot take 1x1 images"):
        create_model(TINY, num_classes=10, input_size=1)  # its max-pool needs 2x2


def test_timm_without_timm_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="'timm:resnet18': timm does not import here"):
        create_model("timm:resnet18", num_classes=10)
    assert "timm:resnet18" not in dnr.registry.MODELS


def test_timm_models_by_name() -> None:
    optional_import("timm")
    model = create_model("timm:resnet18", num_classes=7, input_size=32).eval()
    assert model.arch_config["name"] == "timm:resnet18"
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_model("timm:no_such_net", num_classes=7)


# ------------------------------------------------------------ channel mode + compact export


def _silence_at_random(model: nn.Module, seed: int) -> dict[str, list[int]]:
    """A random kept-channel pattern applied through channel masking (what pruning leaves),
    with BatchNorm statistics that are not trivial."""
    masking = ChannelMasking(model, None, density=1.0)
    gen = torch.Generator().manual_seed(seed)
    kept: dict[str, list[int]] = {}
    masks = {}
    for name, mask in masking.masks.items():
        size = len(mask)
        k = int(torch.randint(1, size + 1, (1,), generator=gen))
        kept[name] = sorted(torch.randperm(size, generator=gen)[:k].tolist())
        masks[name] = torch.zeros(size, dtype=torch.bool)
        masks[name][kept[name]] = True
    masking.adopt({"granularity": "channel", "masks": masks})
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, 32, 32, generator=gen))
    return kept


@pytest.mark.parametrize("name", [TINY, "wrn28_10", TV_RESNET18])
def test_compact_logits_equal_the_masked_models(name, tmp_path) -> None:
    _needs(name)
    model = _build(name)
    kept = _silence_at_random(model, seed=1)
    model.eval()
    compact = compact_model(model, kept)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)
    modules = dict(compact.named_modules())
    assert {n: modules[n].out_channels for n in kept} == {n: len(i) for n, i in kept.items()}
    weights = [sum(p.numel() for p in prunable_parameters(m).values()) for m in (compact, model)]
    assert weights[0] < weights[1]
    save_model(tmp_path, compact, {"classes": list("0123456789")})
    reloaded = load_model(tmp_path)  # from model.json alone: name + channel counts
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), compact(x), rtol=0, atol=0)


def test_narrowing_a_factory_model_checks_the_channel_names_and_counts() -> None:
    with pytest.raises(ValueError, match="'net.conv2' is not a prunable conv"):
        create_model(TINY, num_classes=10, channels={"net.conv2": 3})
    with pytest.raises(ValueError, match="has 8 channels, cannot keep 9"):
        create_model(TINY, num_classes=10, channels={"net.conv1": 9})
    narrow = create_model(TINY, num_classes=10, channels={"net.conv1": 3})
    assert (narrow.net.conv1.out_channels, narrow.net.bn1.num_features) == (3, 3)
    assert narrow.net.conv2.in_channels == 3
    assert narrow.net.conv2.weight.shape[1] == 3


# ------------------------------------------------------------------- end to end, by the CLI


def _train(tmp_path, name: str, *extra: str, **overrides: object) -> dict:
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--quiet"]
    small = dict(  # the larger networks: one epoch on fewer images, no sanity attacks
        model__width=0.1 if name.startswith("wrn") else 1.0,
        train__epochs=2 if name == TINY else 1,
        data__subset=192 if name == TINY else 96,
        eval__subset=32,
        eval__sanity=False,
    )
    argv += tiny_overrides(model__name=name, **{**small, **overrides})
    assert main([*argv, *extra]) == 0
    return json.loads((run / "model.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", [TINY, TV_RESNET18])
def test_cli_trains_dnr_on_a_factory_model_at_exact_budget(tmp_path, name) -> None:
    _needs(name)
    meta = _train(tmp_path, name, sparsity__method="dnr", sparsity__density=0.1)
    assert meta["architecture"]["name"] == name
    sparsity = meta["sparsity"]
    assert sparsity["mode"] == "weight"
    assert sparsity["num_active"] == round(0.1 * sparsity["num_prunable"])
    model = load_model(tmp_path / "run")
    prunable = prunable_parameters(model)
    assert sum(p.numel() for p in prunable.values()) == sparsity["num_prunable"]
    assert sum(int((p != 0).sum()) for p in prunable.values()) <= sparsity["num_active"]
    assert all(key.startswith("net.") for key in prunable)


def _image_folder(root, per_class: int = 24, test_per_class: int = 6) -> None:
    """CIFAR-shaped 32x32 PNGs in four class folders, each class its own colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(("airplane", "bird", "cat", "ship")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                base = np.array([60 * label, 255 - 60 * label, 120], dtype=np.int64)
                noise = rng.integers(-40, 40, (32, 32, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", [TINY, TV_RESNET18])
def test_cli_trains_dnr_on_a_factory_model_from_an_image_folder(tmp_path, name) -> None:
    """The issue's done-when: a torchvision network on an ImageFolder, exact budget."""
    _needs(name)
    _image_folder(tmp_path / "pets")
    meta = _train(
        tmp_path,
        name,
        sparsity__method="dnr",
        sparsity__density=0.1,
        data__name="folder",
        data__root=str(tmp_path / "pets"),
        data__subset="null",
    )
    assert meta["dataset"]["name"] == "folder"
    assert meta["classes"] == ["airplane", "bird", "cat", "ship"]
    assert meta["architecture"]["num_classes"] == 4
    assert meta["sparsity"]["num_active"] == round(0.1 * meta["sparsity"]["num_prunable"])
    model = load_model(tmp_path / "run")
    prunable = prunable_parameters(model)
    assert sum(int((p != 0).sum()) for p in prunable.values()) <= meta["sparsity"]["num_active"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [TINY, "wrn28_10", TV_RESNET18])
def test_cli_channel_dnr_on_any_model_exports_compact_with_equal_logits(tmp_path, name) -> None:
    _needs(name)
    meta = _train(
        tmp_path,
        name,
        sparsity__method="dnr",
        sparsity__granularity="channel",
        sparsity__density=0.3,
        sparsity__redistribution=1.0,
    )
    assert meta["sparsity"]["mode"] == "channel"
    result = export_run(tmp_path / "run", "compact", tmp_path / "compact")
    assert "fewer" in result.notes[0]
    out_meta = read_model_meta(tmp_path / "compact")
    assert out_meta["architecture"]["name"] == name
    assert out_meta["architecture"]["channels"] == {
        n: len(i) for n, i in meta["sparsity"]["kept_channels"].items()
    }
    full, narrow = load_model(tmp_path / "run"), load_model(tmp_path / "compact")
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), full(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.slow
def test_a_factory_named_in_a_model_json_is_not_imported_without_trust(
    tmp_path, monkeypatch, capsys
) -> None:
    """A model.json from elsewhere must not run code: its factory is imported only when the
    command itself named it (dnr train) or DNR_TRUST_MODEL_CODE=1 says the file is trusted."""
    _train(tmp_path, TINY, sparsity__method="dnr", sparsity__density=0.3)  # the command names it
    monkeypatch.delenv("DNR_TRUST_MODEL_CODE")
    sys.modules.pop("factories", None)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--subset", "8", "--no-sanity"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "imports and runs that code" in err
    assert "DNR_TRUST_MODEL_CODE=1" in err
    assert "factories" not in sys.modules  # refused before anything was imported
    assert (
        main(["export", str(tmp_path / "run"), "--format", "sparse", "--out", str(tmp_path / "x")])
        == 2
    )
    monkeypatch.setenv("DNR_TRUST_MODEL_CODE", "1")
    assert isinstance(load_model(tmp_path / "run"), nn.Module)
