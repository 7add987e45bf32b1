"""dnr.models: shapes, architecture sizes (computed from the spec), registry, round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dnr.models import (
    CIFAR_MEAN,
    CIFAR_STD,
    Normalize,
    create_model,
    list_models,
    register_model,
)
from dnr.registry import MODELS

# fmt: off
VGG16_SPEC = [
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
]
# fmt: on


def vgg16_expected(num_classes: int) -> tuple[int, int]:
    """(conv + linear weights, all parameters) for width 1, from the paper's cfg."""
    weights = bn = 0
    c_in = 3
    for v in VGG16_SPEC:
        if v == "M":
            continue
        weights += c_in * v * 9
        bn += 2 * v
        c_in = v
    weights += c_in * num_classes
    return weights, weights + bn + num_classes


def resnet18_expected(num_classes: int) -> int:
    """All parameters of CIFAR ResNet-18 (width 1), from the spec."""
    total = 3 * 64 * 9 + 2 * 64  # stem conv + BN
    c_in = 64
    for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for s in (stride, 1):
            total += c_in * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes
            if s != 1 or c_in != planes:
                total += c_in * planes + 2 * planes  # 1x1 projection + BN
            c_in = planes
    return total + c_in * num_classes + num_classes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models():
    assert {"vgg16", "resnet18"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
@pytest.mark.parametrize("input_size", [32, 64])
@pytest.mark.parametrize(("width", "num_classes"), [(0.0625, 10), (0.125, 100), (0.1, 200)])
def test_output_shape(name, input_size, width, num_classes):
    model = create_model(name, num_classes=num_classes, input_size=input_size, width=width).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, input_size, input_size))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_normalize_is_first_child(name):
    model = create_model(name, num_classes=10, width=0.0625)
    first_name, first = next(iter(model.named_children()))
    assert first_name == "normalize"
    assert isinstance(first, Normalize)
    assert model.normalize is first


def test_vgg16_param_count_matches_spec():
    model = create_model("vgg16", num_classes=10)
    weights, total = vgg16_expected(10)
    assert abs(weights - 14.7e6) < 0.05e6  # the paper's ~14.7M conv+linear weights
    counted = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1
    )
    assert counted == weights
    assert n_params(model) == total
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert linears[0].in_features == 512


def test_resnet18_param_count_matches_spec():
    model = create_model("resnet18", num_classes=10)
    assert resnet18_expected(10) == 11_173_962  # the well-known CIFAR ResNet-18 figure
    assert n_params(model) == 11_173_962
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    # stride-1 3x3 stem, no max-pool
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("num_classes", [10, 100, 200])
def test_param_count_follows_num_classes(num_classes):
    assert n_params(create_model("resnet18", num_classes=num_classes)) == resnet18_expected(
        num_classes
    )
    assert (
        n_params(create_model("vgg16", num_classes=num_classes)) == vgg16_expected(num_classes)[1]
    )


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_width_scales_channels(name):
    model = create_model(name, num_classes=10, width=0.0625)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 4
    assert max(c.out_channels for c in convs) == 32
    tiny = create_model(name, num_classes=10, width=0.001)  # never below one channel
    assert min(c.out_channels for c in tiny.modules() if isinstance(c, nn.Conv2d)) == 1


def test_vgg_64_uses_global_pool():
    model = create_model("vgg16", num_classes=200, input_size=64, width=0.0625)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert model.classifier.in_features == 32


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'alexnet'; choose one of") as err:
        create_model("alexnet", num_classes=10)
    for name in ("vgg16", "resnet18"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(input_size=16), r"input_size must be at least 32 for VGG \(5 2x2 pools\), got 16"),
        (dict(input_size=0), r"input_size must be an integer in \[1, 4096\], got 0"),
        (dict(input_size=8192), r"input_size must be an integer in \[1, 4096\], got 8192"),
        (dict(input_size=32.0), r"input_size must be an integer in \[1, 4096\], got 32.0"),
        (dict(num_classes=0), "num_classes must be a positive integer, got 0"),
        (dict(width=0.0), "width must be a positive number, got 0.0"),
        (dict(width=-1.0), "width must be a positive number, got -1.0"),
        (dict(mean=(0.5, 0.5)), r"mean and std need 3 values \(RGB\), got \[0.5, 0.5\]"),
        (dict(std=(0.1, 0.0, 0.1)), "std must be positive"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(num_classes=10) | kwargs
    with pytest.raises(ValueError, match=message):
        create_model("vgg16", **args)


def test_normalize_layer():
    norm = Normalize(CIFAR_MEAN, CIFAR_STD)
    assert set(norm.state_dict()) == {"mean", "std"}
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_arch_config_round_trip(name):
    torch.manual_seed(0)
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    m1 = create_model(name, num_classes=7, input_size=64, width=0.125, mean=mean, std=std)
    cfg = json.loads(json.dumps(m1.arch_config))  # what model.json holds
    assert cfg == dict(
        name=name, num_classes=7, input_size=64, width=0.125, mean=list(mean), std=list(std)
    )
    # train a BN step so running stats are not at their defaults
    m1.train()
    m1(torch.rand(4, 3, 64, 64))
    m2 = create_model(**cfg)
    m2.load_state_dict(m1.state_dict())
    assert "normalize.mean" in m1.state_dict()
    m1.eval(), m2.eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))


def test_register_model_custom():
    name = "tiny_test_net"

    @register_model
    def tiny_test_net(*, num_classes, input_size, width, mean, std):
        return nn.Sequential()

    try:
        assert name in list_models()
        model = create_model(name, num_classes=3)
        assert model.arch_config["name"] == name
        with pytest.raises(ValueError, match=f"model '{name}' is already registered"):

            @register_model(name=name)
            def other(**kwargs):
                return nn.Sequential()
    finally:
        MODELS.unregister(name)
    assert name not in list_models()


def test_xavier_init_resets_weights_biases_and_batchnorm() -> None:
    from dnr.models import init_weights

    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=10, width=0.25, mean=(0.5,) * 3, std=(0.2,) * 3)
    with torch.no_grad():
        model.features[1].weight.fill_(3.0)
    conv = model.features[0]
    bound = (6 / (conv.in_channels * 9 + conv.out_channels * 9)) ** 0.5
    default_max = conv.weight.abs().max().item()
    init_weights(model, "xavier")
    assert conv.weight.abs().max().item() <= bound + 1e-6 < default_max
    assert torch.all(model.features[1].weight == 1)
    assert torch.all(model.classifier.bias == 0)
    before = [p.clone() for p in model.parameters()]
    init_weights(model, "pytorch")  # the layers' own defaults: nothing to redo
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="weight init"):
        init_weights(model, "orthogonal")
