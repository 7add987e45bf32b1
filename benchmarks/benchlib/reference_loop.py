"""A faithful reference-style training loop: the way the released DNR / HYDRA code trains.

What our pipeline is compared with in ``train_throughput.py --reference`` (and, for the data
path alone, in ``data_throughput.py``). Everything here deliberately follows the released
research code (torchvision CIFAR dataset + ``sparse_learning``'s ``Masking`` + a PGD with
``loss.backward()``), not our optimised step:

* data: a ``torch.utils.data.DataLoader`` (``shuffle=True``, ``num_workers`` worker processes
  started anew every epoch) over a ``Dataset`` that turns each uint8 image into a PIL image
  (``Image.fromarray``, as ``torchvision.datasets.CIFAR10.__getitem__`` does) and applies
  ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor()])`` per image.
  torchvision itself is not installed (it would pull another torch build), so the three
  transforms are re-implemented below exactly as torchvision's PIL path does them:
  ``ImageOps.expand(img, border=4, fill=(0, 0, 0))``, crop offsets from
  ``torch.randint`` (``RandomCrop.get_params``), ``Image.crop``, a flip when
  ``torch.rand(1) < 0.5`` (``Image.transpose(FLIP_LEFT_RIGHT)``), and ``ToTensor``'s
  ``np.array`` -> HWC -> CHW -> ``float().div(255)``; the default collate stacks the batch,
  which is then copied to the device with ``.to(device)``;
* attack: PGD (eps 8/255, step 2/255, 7 steps, uniform random start drawn with
  ``uniform_``) that calls ``loss.backward()`` -- so every attack step also computes and
  accumulates the weight gradients -- inside ``model.eval()`` ... ``model.train()``;
* loss: hybrid ``beta * CE(model(x)) + (1 - beta) * CE(model(x_adv))``, fp32 throughout;
* masks: ``sparse_learning``-style host-side bookkeeping -- a Python dict of float32 masks
  keyed by parameter name; after every ``optimizer.step()`` the loop walks
  ``model.named_parameters()`` and replaces ``tensor.data = tensor.data * mask`` (a new
  tensor per layer), then steps the prune-rate ``CosineDecay`` (a ``CosineAnnealingLR`` on
  a dummy SGD optimizer) and the step counter; rewiring happens at epoch ends (outside the
  measured steps, as in our pipeline);
* logging: ``train_loss += loss.item()`` and ``correct += pred.eq(y).sum().item()`` every
  step (two host synchronisations per step).

Importable (``ReferenceTrainer``, ``make_loader``, the transforms) and used by
``train_throughput.py --reference``; it is not meant to be run by itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnr.sparsity.layers import PRUNABLE_MODULES

__all__ = [
    "Compose",
    "PILImages",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ReferenceTrainer",
    "ToTensor",
    "crop_flip_pil",
    "make_loader",
    "pgd_reference",
    "reference_masks",
]

# ---------------------------------------------------------------- data (torchvision's PIL path


def crop_flip_pil(
    img: Image.Image, top: int, left: int, flip: bool, padding: int = 4
) -> Image.Image:
    """The PIL operations of ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip`` for
    given randomness: ``top``/``left`` index the zero-padded image (as in
    ``dnr.data.loader.random_crop_flip``'s ``shifts``)."""
    w, h = img.size
    if padding:
        img = ImageOps.expand(img, border=padding, fill=(0,) * len(img.getbands()))
    img = img.crop((left, top, left + w, top + h))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


class RandomCrop:
    """torchvision's ``RandomCrop(size, padding)`` for PIL images (constant 0 fill)."""

    def __init__(self, size: int, padding: int = 4) -> None:
        self.size, self.padding = size, padding

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.padding:
            img = ImageOps.expand(img, border=self.padding, fill=(0,) * len(img.getbands()))
        w, h = img.size
        th = tw = self.size
        if h == th and w == tw:
            return img
        i = torch.randint(0, h - th + 1, size=(1,)).item()  # RandomCrop.get_params
        j = torch.randint(0, w - tw + 1, size=(1,)).item()
        return img.crop((j, i, j + tw, i + th))


class RandomHorizontalFlip:
    """A left-right flip with probability ``p`` (one ``torch.rand`` draw, as torchvision)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ToTensor:
    """PIL uint8 HWC -> float32 CHW in [0, 1], as ``torchvision.transforms.ToTensor``."""

    def __call__(self, pic: Image.Image) -> Tensor:
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        img = img.permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


class Compose:
    """The transforms one after another, as ``torchvision.transforms.Compose``."""

    def __init__(self, transforms: Iterable[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img


def train_transform(size: int = 32, padding: int = 4) -> Compose:
    """The released code's CIFAR training transform (normalisation is inside the model)."""
    return Compose([RandomCrop(size, padding), RandomHorizontalFlip(), ToTensor()])


class PILImages(Dataset):
    """uint8 (N, H, W, 3) images -> PIL per item -> ``transform``, as torchvision's CIFAR10."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable | None = None) -> None:
        self.x, self.targets, self.transform = x, [int(t) for t in y], transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.x[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def make_loader(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    num_workers: int = 2,
    *,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """The released code's training loader (shuffled, augmented, per-epoch workers)."""
    return DataLoader(
        PILImages(x, y, train_transform(x.shape[1])),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


# ---------------------------------------------------------------- training step


def pgd_reference(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int
) -> Tensor:
    """PGD the way research code writes it: ``loss.backward()`` (weight gradients too)."""
    model.eval()
    x_adv = x.detach() + torch.zeros_like(x).uniform_(-eps, eps)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        assert x_adv.grad is not None  # (for mypy: backward just filled it)
        x_adv = x_adv.detach() + step_size * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()


def reference_masks(
    model: nn.Module, density: float, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """sparse_learning-style masks: float32 0/1 per Conv2d/Linear weight, keyed by
    ``named_parameters`` name, each layer at ``density`` (uniform), on the weight's device."""
    weights = {
        id(m.weight) for m in model.modules() if isinstance(m, PRUNABLE_MODULES)
    }  # the same tensors as dnr.sparsity.layers.prunable_parameters
    masks = {}
    for name, p in model.named_parameters():
        if id(p) in weights:
            keep = torch.rand(p.shape, generator=generator) < density
            masks[name] = keep.to(dtype=torch.float32, device=p.device)
    return masks


class CosineDecay:
    """sparse_learning's prune-rate schedule: a CosineAnnealingLR on a dummy optimizer."""

    def __init__(self, prune_rate: float, t_max: int, eta_min: float = 0.005) -> None:
        self.sgd = torch.optim.SGD(
            torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))]), lr=prune_rate
        )
        self.stepper = torch.optim.lr_scheduler.CosineAnnealingLR(self.sgd, t_max, eta_min)

    def step(self) -> None:
        """One step of the schedule (the released loop calls it after every batch)."""
        with warnings.catch_warnings():  # the dummy optimizer never steps: torch warns once
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.stepper.step()

    def get_dr(self, prune_rate: float) -> float:
        """The current prune rate (sparse_learning's name and signature)."""
        return self.sgd.param_groups[0]["lr"]


class ReferenceTrainer:
    """One reference-style training step per :meth:`step` (see the module docstring).

    ``masks`` None trains dense (no masking bookkeeping at all).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        masks: dict[str, Tensor] | None = None,
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 7,
        beta: float = 0.5,
        prune_rate: float = 0.2,
        total_steps: int = 10_000,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.masks = masks
        self.eps, self.step_size, self.steps, self.beta = eps, step_size, steps, beta
        self.prune_rate = prune_rate
        self.decay = CosineDecay(prune_rate, total_steps)
        self.global_steps = 0
        self.train_loss = 0.0
        self.correct = 0
        self.seen = 0
        if masks is not None:
            self.apply_mask()

    def apply_mask(self) -> None:
        """sparse_learning's ``Masking.apply_mask``."""
        assert self.masks is not None
        for name, tensor in self.model.named_parameters():
            if name in self.masks:
                tensor.data = tensor.data * self.masks[name]

    def mask_step(self) -> None:
        """sparse_learning's ``Masking.step``: optimizer step, masks, schedule, counter."""
        self.optimizer.step()
        self.apply_mask()
        self.decay.step()
        self.prune_rate = self.decay.get_dr(self.prune_rate)
        self.global_steps += 1

    def step(self, x: Tensor, y: Tensor) -> float:
        """One training step on a CPU batch from the loader; returns the loss (synced)."""
        model = self.model
        model.train()
        x, y = x.to(self.device), y.to(self.device)
        x_adv = pgd_reference(model, x, y, self.eps, self.step_size, self.steps)
        self.optimizer.zero_grad()
        logits_clean = model(x)
        logits_adv = model(x_adv)
        loss = self.beta * F.cross_entropy(logits_clean, y) + (1 - self.beta) * F.cross_entropy(
            logits_adv, y
        )
        loss.backward()
        if self.masks is not None:
            self.mask_step()
        else:
            self.optimizer.step()
        value = loss.item()
        self.train_loss += value
        pred = logits_adv.argmax(dim=1, keepdim=True)
        self.correct += pred.eq(y.view_as(pred)).sum().item()
        self.seen += len(y)
        return value
