"""dnr.costs: weights and MACs counted exactly (by hand and by formula), CPU latency."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dnr
from dnr.costs import measure_latency, model_costs
from dnr.sparsity import Masking

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Small enough to count by hand: a biased conv, a strided grouped conv, BN, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)  # 8x8 -> 4 x 8x8
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False)  # -> 4 x 3x3
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv2(self.conv1(x))).flatten(1))


def test_tiny_model_by_hand() -> None:
    model = Tiny()
    costs = model_costs(model, 8)
    # weights: conv1 4*3*3*3 = 108, conv2 4*(4/2)*3*3 = 72, fc 36*5 = 180
    assert costs.params == 108 + 72 + 180 == 360
    # + conv1 bias 4, BN weight/bias 8, fc bias 5
    assert costs.total_params == 360 + 4 + 8 + 5
    # conv1: 4*8*8 outputs * 3*3*3; conv2: 4*3*3 outputs * 2*3*3; fc: 36*5
    assert costs.layers["conv1"].macs == 256 * 27 == 6912
    assert costs.layers["conv2"].macs == 36 * 18 == 648
    assert costs.layers["fc"].macs == 180
    assert costs.macs == 6912 + 648 + 180


def test_nonzero_only_counts_known_zeros() -> None:
    model = Tiny()
    with torch.no_grad():
        model.conv1.weight[:2] = 0  # 54 of 108 left
        model.fc.weight.view(-1)[:100] = 0  # 80 of 180 left
    costs = model_costs(model, 8, nonzero_only=True)
    assert costs.params == 54 + 72 + 80
    assert costs.total_params == 54 + 72 + 80 + 17
    # MACs = nnz(weight) * output positions: 64 for conv1, 9 for conv2, 1 for fc
    assert costs.macs == 54 * 64 + 72 * 9 + 80 * 1
    assert model_costs(model, 8).params == 360  # dense counts are unaffected by zeros


def test_counting_leaves_the_model_untouched() -> None:
    model = Tiny().train()
    model.bn.running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_costs(model, 8)
    assert model.training
    assert model.bn.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # no BN statistics updated


# VGG16 as the paper's table, written out here rather than read from dnr.models.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16_expected(width: float, size: int, classes: int) -> tuple[int, int]:
    params = macs = 0
    in_ch, side = 3, size
    for v in _VGG16:
        if v == "M":
            side //= 2
            continue
        out_ch = max(1, round(int(v) * width))
        params += out_ch * in_ch * 9
        macs += out_ch * side * side * in_ch * 9
        in_ch = out_ch
    return params + in_ch * classes, macs + in_ch * classes


def test_vgg16_matches_the_formula() -> None:
    model = dnr.create_model("vgg16", num_classes=10, width=0.25)
    costs = model_costs(model, 32)
    params, macs = _vgg16_expected(0.25, 32, 10)
    assert (costs.params, costs.macs) == (params, macs)
    assert (costs.params, costs.macs) == (921_008, 19_907_840)
    assert costs.total_params == sum(p.numel() for p in model.parameters())
    full = model_costs(dnr.create_model("vgg16", num_classes=10), 32)
    assert (full.params, full.macs) == _vgg16_expected(1.0, 32, 10)
    assert full.macs == 313_201_664  # the familiar ~313M MACs of CIFAR VGG16


def test_resnet18_matches_the_formula() -> None:
    width, size = 0.25, 32
    model = dnr.create_model("resnet18", num_classes=10, width=width)

    def conv(c_out: int, c_in: int, k: int, side: int) -> tuple[int, int]:
        return c_out * c_in * k * k, c_out * side * side * c_in * k * k

    parts = []
    c_in, side = round(64 * width), size
    parts.append(conv(c_in, 3, 3, side))
    for base, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        planes = round(base * width)
        for block_stride in (stride, 1):
            side //= block_stride
            parts.append(conv(planes, c_in, 3, side))
            parts.append(conv(planes, planes, 3, side))
            if block_stride != 1 or c_in != planes:
                parts.append(conv(planes, c_in, 1, side))
            c_in = planes
    parts.append((c_in * 10, c_in * 10))
    costs = model_costs(model, size)
    assert costs.params == sum(p for p, _ in parts)
    assert costs.macs == sum(m for _, m in parts)


def test_vgg16_nonzero_macs_follow_the_masks() -> None:
    model = dnr.create_model("vgg16", num_classes=10, width=0.25)
    masking = Masking(model, None, density=0.05, generator=torch.Generator().manual_seed(0))
    costs = model_costs(model, 32, nonzero_only=True)
    assert costs.params == masking.num_active
    sides = {}
    side = 32
    index = 0
    for v in _VGG16:  # features.<i>: conv, bn, relu per conv; one module per pool
        if v == "M":
            side //= 2
            index += 1
        else:
            sides[f"features.{index}"] = side
            index += 3
    expected = sum(int(masking.masks[f"{name}.weight"].sum()) * s * s for name, s in sides.items())
    expected += int(masking.masks["classifier.weight"].sum())
    assert costs.macs == expected


def test_latency_is_a_positive_finite_median_and_restores_the_model() -> None:
    model = Tiny().train()
    seconds = measure_latency(model, 8, 3, repeats=3, warmup=1)
    assert math.isfinite(seconds)
    assert seconds > 0
    assert model.training
    assert next(model.parameters()).device.type == "cpu"
    vgg = dnr.create_model("vgg16", num_classes=10, width=0.0625).eval()
    assert measure_latency(vgg, 32, 2, repeats=2, warmup=0) > 0
    assert not vgg.training
    with pytest.raises(ValueError, match="need batch >= 1, repeats >= 1"):
        measure_latency(model, 8, 0)
