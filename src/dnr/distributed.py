"""torchrun integration: which process this is, and the few collectives training needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process builds the same
model, masks and data from the same seeds; :class:`Distributed` then adds what keeps them
one run:

* each rank trains on its slice of every global batch (``BatchLoader(rank=, world=)``), and
  DDP averages the gradients, so parameters and momentum stay bitwise identical;
* the masks are decided by every rank from those identical statistics (no broadcast), and
  :meth:`Distributed.check_same` verifies with one all-reduce that they really are;
* BatchNorm running statistics are per rank between DDP's broadcasts;
  :meth:`Distributed.broadcast_buffers` makes rank 0's the run's before validating and saving.

In a single process every method is a no-op, so the training loop calls them unconditionally
and never asks whether it is distributed. Importing this module does not initialise anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dnr.devices import resolve_device
from dnr.errors import ConfigError

__all__ = ["Distributed", "RankDivergenceError", "tensor_checksum", "unwrap"]


class RankDivergenceError(RuntimeError):
    """Ranks of one run hold different masks or weights: a bug, never a user error."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (attacks, masks and saving work on the plain module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def tensor_checksum(tensors: Iterable[Tensor]) -> Tensor:
    """Two float64 numbers per tensor: its sum, and a position-weighted sum.

    Bitwise-equal tensors give equal checksums on every rank (same reduction on the same
    hardware); a mask with one weight moved, or a weight that differs, changes them.
    """
    sums: list[Tensor] = []
    device = None
    for t in tensors:
        flat = t.detach().reshape(-1).double()
        device = device or flat.device  # (masks may live on the CPU, weights on a GPU)
        weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 1021 + 1
        sums += [flat.sum().to(device), (flat * weights).sum().to(device)]
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)


@dataclass
class Distributed:
    """This process's place in the run (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this object initialised the process group, so it closes it
    # the gloo group agree() uses beside NCCL (False: the default group is gloo already)
    _control: Any = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and logs."""
        return self.rank == 0

    @staticmethod
    def launched(env: Mapping[str, str] = os.environ) -> bool:
        """Whether this process is one of several started by torchrun."""
        return _env_int(env, "WORLD_SIZE", 1) > 1

    @classmethod
    def setup(
        cls,
        device: str,
        backend: str = "auto",
        env: Mapping[str, str] = os.environ,
    ) -> tuple[Distributed, torch.device]:
        """Join the torchrun process group if there is one; return it and this rank's device.

        ``device`` is ``train.device``; under torchrun a CUDA run uses ``cuda:LOCAL_RANK``
        (choose GPUs with ``CUDA_VISIBLE_DEVICES``, not ``cuda:N``).
        """
        world = _env_int(env, "WORLD_SIZE", 1)
        if world <= 1:
            return cls(), resolve_device(device)
        rank, local_rank = _env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0)
        if device.startswith("cuda:"):
            raise ConfigError(
                f"train.device={device} under torchrun: each rank uses cuda:LOCAL_RANK; "
                "set train.device=cuda (or auto) and pick GPUs with CUDA_VISIBLE_DEVICES"
            )
        kind = resolve_device(device)
        if kind.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"torchrun started {local_rank + 1}+ processes on this node but only "
                    f"{torch.cuda.device_count()} CUDA device(s) are visible"
                )
            kind = torch.device("cuda", local_rank)
            torch.cuda.set_device(kind)
        elif kind.type != "cpu":
            raise ConfigError(f"train.device={device}: torchrun runs on CUDA or CPU, not {kind}")
        if backend == "auto":
            backend = "nccl" if kind.type == "cuda" else "gloo"
        if backend == "nccl" and kind.type != "cuda":
            raise ConfigError("train.dist_backend=nccl needs CUDA devices; use gloo on CPU")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(backend, rank=rank, world_size=world)
        return cls(rank, world, local_rank, backend, owns), kind

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # -- models ---------------------------------------------------------------------------

    def wrap(self, model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
        """DDP around ``model`` (which it keeps using in place), or ``model`` itself."""
        if not self.enabled:
            return model
        if sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn=true needs CUDA devices (PyTorch's limit)")
            # The new modules take the same Parameter and buffer objects, so the optimizer
            # and the masks keep pointing at what trains; the model itself is not a BN.
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if self.enabled:
            for buffer in unwrap(model).buffers():
                dist.broadcast(buffer, 0)

    # -- collectives ----------------------------------------------------------------------

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over ranks, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a signal that reached one).

        Runs on a gloo group with a CPU tensor, so it never waits for the GPU.
        """
        if not self.enabled:
            return flag
        if self._control is None:  # created on first use, at the same call on every rank
            self._control = dist.new_group(backend="gloo") if self.backend != "gloo" else False
        group = self._control or None
        votes = torch.tensor([int(flag)])
        dist.all_reduce(votes, group=group)
        return bool(votes.item())

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's equal slice (dim 0) of a tensor drawn for the whole global batch."""
        if not self.enabled:
            return batch
        per = len(batch) // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def check_same(self, values: Tensor, what: str) -> None:
        """Raise :class:`RankDivergenceError` unless ``values`` is identical on every rank."""
        if not self.enabled:
            return
        both = torch.cat([values, -values]).to(torch.float64)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = both[: len(values)], -both[len(values) :]
        differ = (high != low).nonzero().flatten()
        if len(differ):
            raise RankDivergenceError(
                f"{what} differ across the {self.world} ranks (rank {self.rank}: "
                f"{len(differ)} of {len(values)} checksums); please report this as a bug"
            )


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"environment variable {key}={value!r} is not an integer") from None
