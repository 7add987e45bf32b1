"""The evaluation protocols: which attacks, with which exact settings.

A protocol is a named list of :class:`AttackSpec`; the numbers every report records next to
its accuracies come from here and nowhere else. Protocols live in the registry
:data:`dnr.registry.PROTOCOLS` (``PROTOCOLS.get("pgd20").specs(eps, norm, restarts)``), so
config validation, ``dnr list`` and CLI help read the same names and descriptions.

Defaults (ε in [0,1] pixel units): ``dnr`` is the released code's (ε 0.031, step 0.01); the
others use the standard ε 8/255, step 2/255 (ℓ2 AutoAttack: ε 0.5). An explicit ``eps``
applies to every attack and scales step sizes with it, keeping each protocol's step/ε ratio;
``full`` with ``eps=None`` mixes 0.031 and 8/255, both inside the 8/255 ball, so its worst
case is a valid ε = 8/255 robust accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dnr.attacks import LossName
from dnr.registry import PROTOCOLS

__all__ = [
    "DNR_EPS",
    "DNR_STEP",
    "STANDARD_EPS",
    "STANDARD_L2_EPS",
    "STANDARD_STEP",
    "AttackSpec",
    "Protocol",
    "attack_catalogue",
]

DNR_EPS = 0.031
DNR_STEP = 0.01
STANDARD_EPS = 8 / 255
STANDARD_STEP = 2 / 255
STANDARD_L2_EPS = 0.5


@dataclass(frozen=True)
class AttackSpec:
    """An attack and its exact settings (``kind`` picks the implementation)."""

    name: str
    kind: Literal["clean", "fgsm", "pgd", "autoattack"]
    eps: float = 0.0
    step_size: float = 0.0
    steps: int = 0
    restarts: int = 1
    loss: LossName = "ce"
    random_start: bool = True


def attack_catalogue(eps: float | None, norm: str, restarts: int | None) -> dict[str, AttackSpec]:
    """Every attack a protocol can name, at ``eps`` (None: each attack's default).

    ``restarts`` overrides the pgd20 / pgd50 / cw restarts.
    """

    def scaled(default_eps: float, default_step: float) -> tuple[float, float]:
        e = default_eps if eps is None else float(eps)
        return e, default_step * e / default_eps

    dnr_eps, dnr_step = scaled(DNR_EPS, DNR_STEP)
    std_eps, std_step = scaled(STANDARD_EPS, STANDARD_STEP)
    aa_eps = (STANDARD_L2_EPS if norm == "L2" else STANDARD_EPS) if eps is None else float(eps)
    specs = [
        AttackSpec("clean", "clean"),
        AttackSpec("fgsm", "fgsm", eps=dnr_eps, random_start=False),
        AttackSpec("pgd7", "pgd", eps=dnr_eps, step_size=dnr_step, steps=7),
        AttackSpec(
            "pgd20", "pgd", eps=std_eps, step_size=std_step, steps=20, restarts=restarts or 5
        ),
        AttackSpec(
            "pgd50", "pgd", eps=std_eps, step_size=std_step, steps=50, restarts=restarts or 10
        ),
        AttackSpec(
            "cw",
            "pgd",
            eps=std_eps,
            step_size=std_step,
            steps=30,
            restarts=restarts or 1,
            loss="cw",
        ),
        AttackSpec("autoattack", "autoattack", eps=aa_eps),
    ]
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class Protocol:
    """A named, described sequence of attacks from :func:`attack_catalogue` (clean first)."""

    name: str
    description: str
    attacks: tuple[str, ...]
    #: run the black-box (Square) sanity check; off for the cheap released-code protocol
    black_box: bool = True

    def specs(self, eps: float | None, norm: str, restarts: int | None) -> list[AttackSpec]:
        catalogue = attack_catalogue(eps, norm, restarts)
        return [catalogue[a] for a in self.attacks]


for _protocol in (
    Protocol(
        "dnr",
        "released DNR code: clean, FGSM eps 0.031, PGD eps 0.031 7 steps of 0.01 random start",
        ("clean", "fgsm", "pgd7"),
        black_box=False,
    ),
    Protocol(
        "pgd20", "PGD eps 8/255, step 2/255, 20 steps, 5 restarts, random start", ("clean", "pgd20")
    ),
    Protocol(
        "pgd50",
        "PGD eps 8/255, step 2/255, 50 steps, 10 restarts, random start",
        ("clean", "pgd50"),
    ),
    Protocol(
        "cw",
        "PGD on the CW margin loss, eps 8/255, step 2/255, 30 steps, random start",
        ("clean", "cw"),
    ),
    Protocol(
        "autoattack",
        "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) via pyautoattack",
        ("clean", "autoattack"),
    ),
    Protocol(
        "full",
        "all of the above and the per-example worst case",
        ("clean", "fgsm", "pgd7", "pgd20", "pgd50", "cw", "autoattack"),
    ),
):
    PROTOCOLS.register(_protocol)
del _protocol
