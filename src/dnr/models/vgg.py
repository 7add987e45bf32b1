"""The VGG16 variant of the released DNR code (CIFAR-style, BN, single linear head)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from dnr.models.channels import ChannelGroup, check_channels
from dnr.models.layers import Normalize, scaled
from dnr.models.registry import register_model

# fmt: off
#: Conv output channels, "M" = 2x2 max-pool. Five pools: 32 -> 1, 64 -> 2.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)
# fmt: on


class VGG(nn.Module):
    """Normalize -> [conv3x3 (no bias) + BN + ReLU | maxpool]* -> Linear.

    For 32x32 inputs the five pools leave a 1x1 map, which is flattened into the head
    exactly as in the paper. For 64x64 (Tiny-ImageNet) the map is 2x2; we global-average
    pool it (decision) so the head stays ``Linear(final_channels -> num_classes)`` and the
    prunable weights are identical across datasets, instead of a 4x wider head. Any other
    size from 32 up is pooled the same way.

    ``width`` multiplies every conv's channel count (rounded, at least 1); ``channels``
    (``{"features.<i>": count}``) sets single convs' counts, as a compact export does.
    Submodules: ``normalize``, ``features`` (Sequential of conv/BN/ReLU/pool, each conv
    directly followed by its BN), ``pool``, ``classifier``.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        *,
        num_classes: int,
        input_size: int = 32,
        width: float = 1.0,
        mean: Sequence[float],
        std: Sequence[float],
        channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        pools = sum(v == "M" for v in cfg)
        if input_size < 2**pools:
            raise ValueError(
                f"input_size must be at least {2**pools} for VGG ({pools} 2x2 pools), "
                f"got {input_size}"
            )
        self.normalize = Normalize(mean, std)
        defaults: dict[str, int] = {}
        index = 0  # position in `features`: conv, BN, ReLU take 3 slots, a pool 1
        for v in cfg:
            if v != "M":
                defaults[f"features.{index}"] = scaled(int(v), width)
            index += 1 if v == "M" else 3
        counts = check_channels(channels, defaults)
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = counts[f"features.{len(layers)}"]
                layers += [
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # 32x32 -> 1x1 map: plain flatten (a wrong input size then fails loudly in the head).
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if input_size != 32 else nn.Identity()
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(self.pool(x).flatten(1))

    def channel_groups(self) -> list[ChannelGroup]:
        """Every conv's output channels; each is read by the next conv or the classifier."""
        convs = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        consumers = convs[1:] + ["classifier"]
        return [
            ChannelGroup(conv, f"features.{int(conv.split('.')[1]) + 1}", (nxt,))
            for conv, nxt in zip(convs, consumers)
        ]


@register_model
def vgg16(
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float],
    std: Sequence[float],
    channels: Mapping[str, int] | None = None,
) -> VGG:
    """VGG16 with BatchNorm, CIFAR-style single linear head (the released DNR code's)."""
    return VGG(
        VGG16_CFG,
        num_classes=num_classes,
        input_size=input_size,
        width=width,
        mean=mean,
        std=std,
        channels=channels,
    )
