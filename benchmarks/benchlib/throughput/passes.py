"""How many forward passes one training step costs: what achieved FLOP/s are counted from."""

from __future__ import annotations

from dnr.config import Config
from dnr.training import attacks_in_training
from dnr.training.step import train_mode


def forward_passes(cfg: Config) -> dict[str, float]:
    """Forward-pass equivalents of one ``train_step`` call, by two counting rules.

    ``conventional``: every backward costs 2 forwards (input and weight gradients), so a
    forward+backward is 3 -- the usual "3x forward" count, and exactly the work of the
    reference loop, whose attack calls ``loss.backward()``. ``needed``: a backward to the
    input only (our attack: parameters frozen, ``autograd.grad`` w.r.t. the input) costs 1
    forward, since the weight-gradient half is skipped.
    PGD-k hybrid: k attack forward+backward, then 2 forwards (clean, adversarial) and one
    backward through both: conventional 3k + 6, needed 2k + 6. FGSM-RS: k = 1. Free with m
    replays: m hybrid updates (2 forwards + backward, whose input gradient moves the
    perturbation): 6m by both rules. The training mode says which applies: whether it
    attacks at all, whether its examples come from the update itself (``free``), and
    whether ``attack.steps`` counts.
    """
    beta = cfg.train.beta
    train_fwd = 2 if 0 < beta < 1 else 1
    update = 3 * train_fwd
    mode = train_mode(cfg)
    if not attacks_in_training(cfg):  # (PGD with 0 steps: k = 0 below gives the same)
        return {"conventional": float(train_fwd * 3), "needed": float(train_fwd * 3)}
    if mode.adversary is None:  # free: the update's own backward moves the perturbation
        m = mode.replays(cfg)
        return {"conventional": float(update * m), "needed": float(update * m)}
    k = int(cfg.attack.steps) if mode.uses_steps else 1
    return {"conventional": float(3 * k + update), "needed": float(2 * k + update)}
