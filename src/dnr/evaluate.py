"""Robustness evaluation: the protocols a careful reviewer would run, with sanity checks.

Public API::

    PROTOCOLS: dict[str, str]                       # protocol name -> description
    select_subset(num_items, subset, seed) -> list[int] | None
    evaluate_model(model, x, y, *, protocol="dnr", eps=None, norm="Linf", subset=None,
                   seed=0, batch_size=None, device=None, progress=True, sanity=True,
                   num_classes=None, restarts=None) -> EvalReport
    clean_accuracy(model, x, y, batch_size=256) -> float          # training validation
    pgd_accuracy(model, x, y, *, eps, step_size, steps, batch_size=256,
                 generator=None) -> float
    default_batch_size(model, example_shape, device) -> int
    AttackResult, SanityCheck, EvalReport             # results (EvalReport.to_dict / to_markdown)

Protocols (ε in [0,1] pixel units; every attack's exact settings are recorded next to its
number):

* ``dnr``: the released code's: clean, FGSM ε 0.031, PGD ε 0.031, 7 steps of 0.01, random
  start.
* ``pgd20`` / ``pgd50``: PGD ε 8/255, step 2/255, 20 steps × 5 restarts / 50 steps × 10
  restarts, random start.
* ``cw``: PGD on the CW margin loss, ε 8/255, step 2/255, 30 steps.
* ``autoattack``: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) run by the reference
  package ``pyautoattack`` (its own ``run_standard_evaluation``); ℓ∞ or ℓ2.
* ``full``: all of the above plus the per-example worst case (robust only if an example
  survives every attack).

Decisions (documented because a reader comparing numbers needs them):

* An example counts as robust under an attack only if the clean input *and* the
  adversarial input are classified correctly (as AutoAttack counts). Hence robust ≤ clean
  by construction and only clean-correct examples are attacked. The released code counted
  the adversarial input alone; the difference is the few misclassified examples an attack
  happens to "fix".
* ``eps=None`` gives each attack its protocol's default (``full`` mixes ε 0.031 for the
  ``dnr`` attacks and 8/255 for the rest; all lie inside the 8/255 ball, so the worst case
  is a valid ε = 8/255 robust accuracy). An explicit ``eps`` applies to every attack and
  step sizes scale with it (same step/ε ratio as the protocol's defaults).
* PGD restarts run only on the examples that survived the earlier restarts (like
  AutoAttack); each restart draws its random start from a CPU generator seeded from
  (seed, attack name), so results do not depend on the accelerator.
* Our FGSM/PGD are ℓ∞ only: ``norm="L2"`` is accepted for ``autoattack`` alone.
* Everything runs in fp32: autocast disabled, TF32 off on CUDA, and a model whose
  parameters are not fp32 (or live on another device) is evaluated as an fp32 copy; the
  caller's model is left exactly as it was (modes and ``requires_grad`` restored).
* The reference AutoAttack reseeds the global torch RNG; we run it inside
  ``torch.random.fork_rng`` so the caller's RNG stream is untouched.

Sanity checks (each PASS or WARN, with its numbers; slack: max(1 example, 0.5 %)):

* ``input_gradients``: input gradients are non-zero on ≥ 90 % of examples.
* ``deterministic``: two forward passes agree (otherwise stochastic gradients).
* ``eps_monotonic``: PGD-10 accuracy does not rise over ε ∈ {0, ε/2, ε, 2ε}.
* ``large_eps``: PGD-10 (CW margin loss) at ε = max(0.5, 4ε) leaves ≤ min(10 %,
  chance + 5 %) accuracy.
* ``pgd_vs_fgsm``: PGD is not weaker than FGSM at the same or a smaller ε.
* ``more_iterations``: more steps/restarts (and AutoAttack) do not raise accuracy.
* ``black_box``: Square (from AutoAttack's cascade, or a 1000-query run when AutoAttack did
  not run) breaks no example that every white-box attack missed. Not run for ``dnr``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import platform
import re
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dnr.attacks import attack_loss, attack_mode, fgsm, pgd


class EvaluationError(ValueError):
    """A request that cannot be evaluated as asked (bad option, missing extra, no data)."""

__all__ = [
    "PROTOCOLS",
    "AttackResult",
    "EvalReport",
    "SanityCheck",
    "clean_accuracy",
    "default_batch_size",
    "evaluate_model",
    "pgd_accuracy",
    "select_subset",
]

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, str] = {
    "dnr": "released DNR code: clean, FGSM eps 0.031, PGD eps 0.031 7 steps of 0.01 random start",
    "pgd20": "PGD eps 8/255, step 2/255, 20 steps, 5 restarts, random start",
    "pgd50": "PGD eps 8/255, step 2/255, 50 steps, 10 restarts, random start",
    "cw": "PGD on the CW margin loss, eps 8/255, step 2/255, 30 steps, random start",
    "autoattack": "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) via pyautoattack",
    "full": "all of the above and the per-example worst case",
}

DNR_EPS = 0.031
DNR_STEP = 0.01
STANDARD_EPS = 8 / 255
STANDARD_L2_EPS = 0.5
AUTOATTACK_VERSION = "standard"
_INSTALL_HINT = 'AutoAttack needs the reference package: pip install "torch-dnr[eval]"'

# Sanity-check constants (see the module docstring).
GRAD_FRACTION_MIN = 0.9
GRID_STEPS = 10
LARGE_EPS = 0.5
SQUARE_QUERIES = 1000

Status = Literal["PASS", "WARN"]


# ----------------------------------------------------------------------------- results


@dataclass
class AttackResult:
    """One attack's accuracy with the exact settings that produced it."""

    name: str
    accuracy: float
    correct: Tensor = field(repr=False)  # bool per example (clean and adversarial correct), CPU
    settings: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_correct(self) -> int:
        return int(self.correct.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "num_correct": self.num_correct,
            "num_examples": int(self.correct.numel()),
            "settings": dict(self.settings),
            "details": dict(self.details),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SanityCheck:
    """A PASS/WARN verdict, the numbers behind it and what a WARN would mean."""

    name: str
    status: Status
    numbers: dict[str, Any]
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "numbers": dict(self.numbers),
                "explanation": self.explanation}


@dataclass
class EvalReport:
    """Everything one evaluation produced; ``to_dict`` is what eval.json stores."""

    protocol: str
    results: list[AttackResult]
    sanity: list[SanityCheck]
    subset_indices: list[int] | None
    num_examples: int
    seed: int
    versions: dict[str, str | None]
    device: str
    norm: str = "Linf"
    num_classes: int | None = None
    batch_size: int | None = None
    seconds: float = 0.0

    def result(self, name: str) -> AttackResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no result named {name!r}; have {[r.name for r in self.results]}")

    @property
    def worst_case(self) -> AttackResult | None:
        """Per-example worst case over all attacks (None unless ≥ 2 attacks ran)."""
        attacks = [r for r in self.results if r.name != "clean"]
        if len(attacks) < 2:
            return None
        correct = torch.stack([r.correct for r in self.results]).all(dim=0)
        return AttackResult(
            name="worst_case",
            accuracy=_mean(correct),
            correct=correct,
            settings={"combines": [r.name for r in self.results],
                      "eps": max(float(r.settings.get("eps", 0.0)) for r in attacks),
                      "norm": self.norm},
        )

    @property
    def all_passed(self) -> bool:
        return all(c.status == "PASS" for c in self.sanity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (per-example flags are left out; counts are kept)."""
        results = [r.to_dict() for r in self.results]
        worst = self.worst_case
        if worst is not None:
            results.append(worst.to_dict())
        return {
            "protocol": self.protocol,
            "protocol_description": PROTOCOLS.get(self.protocol, ""),
            "norm": self.norm,
            "num_examples": self.num_examples,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "subset_indices": self.subset_indices,
            "batch_size": self.batch_size,
            "device": self.device,
            "versions": dict(self.versions),
            "results": results,
            "worst_case_accuracy": None if worst is None else worst.accuracy,
            "sanity": [c.to_dict() for c in self.sanity],
            "sanity_passed": self.all_passed,
            "seconds": round(self.seconds, 3),
        }

    def to_markdown(self) -> str:
        rows = [[r.name, f"{100 * r.accuracy:.2f}%", str(r.num_correct),
                 _format_settings(r.settings)] for r in self.results]
        worst = self.worst_case
        if worst is not None:
            rows.append(["**worst case**", f"**{100 * worst.accuracy:.2f}%**",
                         str(worst.num_correct), "robust only if it survives every attack above"])
        subset = ("all examples" if self.subset_indices is None
                  else f"seeded random subset (seed {self.seed})")
        lines = [
            f"Protocol `{self.protocol}`, {self.norm}, {self.num_examples} examples "
            f"({subset}), device {self.device}, fp32.",
            "",
            _md_table(["attack", "accuracy", "correct", "settings"], rows),
        ]
        if self.sanity:
            lines += ["", _md_table(
                ["sanity check", "status", "numbers", "explanation"],
                [[c.name, c.status, _format_settings(c.numbers), c.explanation]
                 for c in self.sanity],
            )]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- subsets


def select_subset(num_items: int, subset: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random subset (None: use all ``num_items``).

    A random subset rather than the first ``subset`` rows: test sets may be sorted by
    class, and a prefix would then contain only a few classes.
    """
    if subset is None or subset >= num_items:
        return None
    if subset <= 0:
        raise EvaluationError(f"subset must be a positive number of examples, got {subset}")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_items, generator=g)[:subset].tolist())


# ----------------------------------------------------------------------------- helpers


def _mean(flags: Tensor) -> float:
    """Fraction of True flags, as an exact ratio of counts (no float32 rounding)."""
    return int(flags.sum()) / flags.numel() if flags.numel() else 0.0


def _slack(n: int) -> int:
    """Examples of tolerance for 'should not be larger' comparisons (noise, not masking)."""
    return max(1, math.ceil(0.005 * n))


def _derive_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _format_eps(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:.4g}"


def _format_settings(settings: dict[str, Any]) -> str:
    parts = []
    for k, v in settings.items():
        if k in ("eps", "step_size") and isinstance(v, float):
            v = _format_eps(v)
        elif isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, tuple)):
            v = "[" + ", ".join(_format_eps(e) if k.startswith("eps") and isinstance(e, float)
                                else f"{e:.4g}" if isinstance(e, float) else str(e)
                                for e in v) + "]"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _to_float(x: Tensor) -> Tensor:
    """uint8 images -> float [0,1]; float images are checked to be in [0,1] already."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0,1], got {x.dtype}")
    return x.float()


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4:
        raise EvaluationError(f"images must be NCHW, got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise EvaluationError(f"labels must be ({x.shape[0]},), got shape {tuple(y.shape)}")
    if x.is_floating_point() and x.numel() and (x.min() < 0 or x.max() > 1):
        raise EvaluationError("float images must lie in [0,1] (models normalize internally); "
                         f"got range [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="batch")


@contextlib.contextmanager
def _fp32_eval(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model in fp32, eval mode, frozen, on ``device``, with autocast and TF32 off.

    A model with non-fp32 floating tensors (bf16 training) or on another device is
    evaluated as a converted copy, so the caller's model is never modified; otherwise the
    model itself is used and its modes / ``requires_grad`` flags are restored afterwards.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    needs_copy = any(
        (t.is_floating_point() and t.dtype != torch.float32) or t.device != device
        for t in tensors
    )
    m = copy.deepcopy(model).to(device=device, dtype=torch.float32) if needs_copy else model
    with _ieee_fp32(device), attack_mode(m), contextlib.ExitStack() as stack:
        for device_type in sorted({"cpu", device.type}):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield m


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls (restored afterwards).

    Uses the ``fp32_precision`` API where torch has it (mixing it with the legacy
    ``allow_tf32`` flags raises), and the legacy flags on older torch.
    """
    saved: list[tuple[Any, str, Any]] = []
    if device.type == "cuda":
        backends = [getattr(torch.backends.cudnn, "conv", None),
                    getattr(torch.backends.cuda, "matmul", None)]
        if all(b is not None and hasattr(b, "fp32_precision") for b in backends):
            saved = [(b, "fp32_precision", b.fp32_precision) for b in backends]
            value: Any = "ieee"
        else:
            saved = [(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32),
                     (torch.backends.cuda.matmul, "allow_tf32",
                      torch.backends.cuda.matmul.allow_tf32)]
            value = False
        for obj, attr, _ in saved:
            setattr(obj, attr, value)
    try:
        yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)


def default_batch_size(model: nn.Module, example_shape: Sequence[int],
                       device: torch.device | str) -> int:
    """A batch size that fits: activation memory of one example (measured with forward
    hooks) × 3 for the backward pass, within half the free GPU memory (2 GiB on CPU),
    clamped to [8, 512]. Override with ``batch_size=`` when it guesses wrong."""
    device = torch.device(device)
    elements = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal elements
        if isinstance(output, Tensor):
            elements += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with _fp32_eval(model, device) as m, torch.no_grad():
            m(torch.zeros(1, *example_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    per_example = max(1, elements) * 4 * 3
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = 2 * 1024**3
    return int(min(512, max(8, budget // per_example)))


# ----------------------------------------------------------------------------- attacks


@dataclass(frozen=True)
class _Spec:
    """An attack and its exact settings."""

    name: str
    kind: Literal["clean", "fgsm", "pgd", "autoattack"]
    eps: float = 0.0
    step_size: float = 0.0
    steps: int = 0
    restarts: int = 1
    loss: str = "ce"
    random_start: bool = True

    @property
    def budget(self) -> int:
        return max(1, self.steps) * self.restarts


def _protocol_specs(protocol: str, eps: float | None, norm: str,
                    restarts: int | None) -> list[_Spec]:
    def scaled(default_eps: float, default_step: float) -> tuple[float, float]:
        e = default_eps if eps is None else float(eps)
        return e, default_step * e / default_eps

    dnr_eps, dnr_step = scaled(DNR_EPS, DNR_STEP)
    std_eps, std_step = scaled(STANDARD_EPS, 2 / 255)
    aa_eps = (STANDARD_L2_EPS if norm == "L2" else STANDARD_EPS) if eps is None else float(eps)
    specs = {
        "clean": _Spec("clean", "clean"),
        "fgsm": _Spec("fgsm", "fgsm", eps=dnr_eps, random_start=False),
        "pgd7": _Spec("pgd7", "pgd", eps=dnr_eps, step_size=dnr_step, steps=7),
        "pgd20": _Spec("pgd20", "pgd", eps=std_eps, step_size=std_step, steps=20,
                       restarts=restarts or 5),
        "pgd50": _Spec("pgd50", "pgd", eps=std_eps, step_size=std_step, steps=50,
                       restarts=restarts or 10),
        "cw": _Spec("cw", "pgd", eps=std_eps, step_size=std_step, steps=30,
                    restarts=restarts or 1, loss="cw"),
        "autoattack": _Spec("autoattack", "autoattack", eps=aa_eps),
    }
    names = {
        "dnr": ["clean", "fgsm", "pgd7"],
        "pgd20": ["clean", "pgd20"],
        "pgd50": ["clean", "pgd50"],
        "cw": ["clean", "cw"],
        "autoattack": ["clean", "autoattack"],
        "full": ["clean", "fgsm", "pgd7", "pgd20", "pgd50", "cw", "autoattack"],
    }[protocol]
    return [specs[n] for n in names]


def _spec_settings(spec: _Spec, norm: str, seed: int, batch_size: int) -> dict[str, Any]:
    if spec.kind == "clean":
        return {"batch_size": batch_size}
    if spec.kind == "fgsm":
        return {"attack": "fgsm", "norm": norm, "eps": spec.eps, "loss": spec.loss,
                "batch_size": batch_size}
    if spec.kind == "pgd":
        return {"attack": "pgd", "norm": norm, "eps": spec.eps, "step_size": spec.step_size,
                "steps": spec.steps, "restarts": spec.restarts,
                "random_start": spec.random_start, "loss": spec.loss,
                "seed": _derive_seed(seed, spec.name), "batch_size": batch_size}
    raise AssertionError(spec.kind)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def _predict_correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                     device: torch.device, bar_desc: str | None = None,
                     progress: bool = False) -> Tensor:
    """Bool (CPU) per example: is the clean input classified correctly."""
    out = torch.zeros(len(y), dtype=torch.bool)
    with _bar(math.ceil(len(y) / batch_size), bar_desc or "clean", progress) as bar:
        for s in _batches(len(y), batch_size):
            xb = _to_float(x[s].to(device, non_blocking=True))
            out[s] = (model(xb).argmax(1).cpu() == y[s].cpu())
            bar.update(1)
    return out


def _attack_correct(model: nn.Module, x: Tensor, y: Tensor, spec: _Spec, *,
                    batch_size: int, device: torch.device, generator: torch.Generator | None,
                    attack_mask: Tensor, progress: bool = False) -> Tensor:
    """Bool (CPU) per example: still correct after ``spec`` (only ``attack_mask`` examples
    are attacked; the rest count as incorrect). Restarts run on survivors only."""
    correct = torch.zeros(len(y), dtype=torch.bool)
    idx = attack_mask.nonzero().flatten()
    with _bar(math.ceil(len(idx) / batch_size), spec.name, progress) as bar:
        for s in _batches(len(idx), batch_size):
            rows = idx[s]
            xb = _to_float(x[rows].to(device, non_blocking=True))
            yb = y[rows].to(device, non_blocking=True)
            alive = torch.ones(len(rows), dtype=torch.bool, device=device)
            for _ in range(spec.restarts):
                live = alive.nonzero().flatten()
                if live.numel() == 0:
                    break
                if spec.kind == "fgsm":
                    x_adv = fgsm(model, xb[live], yb[live], eps=spec.eps)
                else:
                    x_adv = pgd(model, xb[live], yb[live], eps=spec.eps,
                                step_size=spec.step_size, steps=spec.steps,
                                random_start=spec.random_start, restarts=1,
                                loss=spec.loss, generator=generator)  # type: ignore[arg-type]
                with torch.no_grad():
                    hit = model(x_adv).argmax(1) != yb[live]
                alive[live[hit]] = False
            correct[rows] = alive.cpu()
            bar.update(1)
    return correct


def _run_attack(model: nn.Module, x: Tensor, y: Tensor, spec: _Spec, *, clean: Tensor,
                norm: str, seed: int, batch_size: int, device: torch.device,
                progress: bool) -> AttackResult:
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(_derive_seed(seed, spec.name))
    correct = _attack_correct(model, x, y, spec, batch_size=batch_size, device=device,
                              generator=generator, attack_mask=clean, progress=progress)
    correct &= clean
    return AttackResult(spec.name, _mean(correct), correct,
                        _spec_settings(spec, norm, seed, batch_size),
                        seconds=time.perf_counter() - started)


# ----------------------------------------------------------------------------- AutoAttack


def _import_autoattack() -> Any:
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise EvaluationError(_INSTALL_HINT) from err
    return AutoAttack


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_BATCH_LINE = re.compile(
    r"^(?P<attack>\S+) - \d+/\d+ - (?:tensor\()?(?P<broken>\d+)(?:,[^)]*)?\)? out of \d+ "
    r"successfully perturbed"
)


class _AutoAttackLog(logging.Handler):
    """Reads the reference implementation's log: per-attack counts and its warnings.

    ``run_standard_evaluation`` returns only the final adversarial examples; its debug log
    has exact per-batch counts of examples each attack broke, which the black-box sanity
    check needs (Square only sees what APGD/FAB left).
    """

    def __init__(self, bar: Any) -> None:
        super().__init__(logging.DEBUG)
        self.bar = bar
        self.broken: dict[str, int] = {}
        self._warnings: dict[str, tuple[str, int]] = {}  # digits-free key -> (first, count)

    @property
    def warnings(self) -> list[str]:
        return [msg if count == 1 else f"{msg} (reported {count} times)"
                for msg, count in self._warnings.values()]

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            key = re.sub(r"\d+", "N", msg)
            first, count = self._warnings.get(key, (msg, 0))
            self._warnings[key] = (first, count + 1)
        m = _BATCH_LINE.match(msg)
        if m:
            self.broken[m["attack"]] = self.broken.get(m["attack"], 0) + int(m["broken"])
        elif msg.startswith("robust accuracy after"):
            self.bar.update(1)


def _run_autoattack(model: nn.Module, x: Tensor, y: Tensor, spec: _Spec, *, clean: Tensor,
                    norm: str, seed: int, batch_size: int, device: torch.device,
                    num_classes: int, progress: bool) -> AttackResult:
    """Standard AutoAttack through the reference ``run_standard_evaluation``."""
    AutoAttack = _import_autoattack()
    started = time.perf_counter()
    x_float = _to_float(x.cpu())
    y_cpu = y.cpu()
    adversary = AutoAttack(model, norm=norm, eps=spec.eps, version=AUTOATTACK_VERSION,
                           device=device, seed=seed)
    attacks = list(adversary.attacks_to_run)
    settings: dict[str, Any] = {
        "attack": "autoattack", "implementation": f"pyautoattack {_package_version('pyautoattack')}",
        "version": AUTOATTACK_VERSION, "attacks": attacks, "norm": norm, "eps": spec.eps,
        "seed": seed, "batch_size": batch_size,
    }
    if num_classes < 10:  # the standard 9 target classes need 10 classes
        if num_classes < 4:
            raise EvaluationError(f"standard AutoAttack needs >= 4 classes (targeted DLR loss); "
                             f"the model has {num_classes}")
        adversary.apgd_targeted.n_target_classes = num_classes - 1
        adversary.fab.n_target_classes = num_classes - 1
        settings["n_target_classes"] = num_classes - 1

    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with _bar(len(attacks), "autoattack", progress) as bar:
        handler = _AutoAttackLog(bar)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            with torch.random.fork_rng(devices=fork_devices):
                _x_adv, y_adv = adversary.run_standard_evaluation(
                    x_float, y_cpu, batch_size=batch_size)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
    for message in handler.warnings:
        log.warning("AutoAttack: %s", message)
    robust = (y_adv.cpu() == y_cpu)  # y_adv: clean prediction where never broken
    details: dict[str, Any] = {"reference_warnings": handler.warnings}
    if sum(handler.broken.values()) == int(clean.sum()) - int(robust.sum()):
        details["broken_by"] = {a: handler.broken.get(a, 0) for a in attacks}
    if bool((robust & ~clean).any()):
        details["note"] = "AutoAttack's clean pass disagreed with ours on some examples"
    correct = robust & clean
    return AttackResult(spec.name, _mean(correct), correct, settings, details,
                        seconds=time.perf_counter() - started)


def _square_survivors(model: nn.Module, x: Tensor, y: Tensor, survivors: Tensor, *,
                      eps: float, norm: str, seed: int, batch_size: int,
                      device: torch.device) -> int | None:
    """How many white-box survivors a short Square attack breaks (None if unavailable)."""
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        return None
    idx = survivors.nonzero().flatten()
    attack = SquareAttack(model, p_init=0.8, n_queries=SQUARE_QUERIES, eps=eps, norm=norm,
                          n_restarts=1, seed=seed, verbose=False, device=device,
                          resc_schedule=False)
    broken = 0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        for s in _batches(len(idx), batch_size):
            xb = _to_float(x[idx[s]].to(device))
            yb = y[idx[s]].to(device)
            x_adv = attack.perturb(xb, yb)
            broken += int((model(x_adv).argmax(1) != yb).sum())
    return broken


# ----------------------------------------------------------------------------- sanity


def _input_gradient_check(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                          device: torch.device) -> SanityCheck:
    ce_nonzero = torch.zeros(len(y), dtype=torch.bool)
    cw_nonzero = torch.zeros(len(y), dtype=torch.bool)
    norms = torch.zeros(len(y))
    with torch.enable_grad():
        for s in _batches(len(y), batch_size):
            xb = _to_float(x[s].to(device)).requires_grad_(True)
            yb = y[s].to(device)
            logits = model(xb)
            (g_ce,) = torch.autograd.grad(attack_loss(logits, yb, "ce").sum(), xb,
                                          retain_graph=True)
            (g_cw,) = torch.autograd.grad(attack_loss(logits, yb, "cw").sum(), xb)
            n_ce = g_ce.flatten(1).norm(dim=1).cpu()
            norms[s] = n_ce
            ce_nonzero[s] = n_ce > 0
            cw_nonzero[s] = g_cw.flatten(1).norm(dim=1).cpu() > 0
    frac_ce, frac_cw = _mean(ce_nonzero), _mean(cw_nonzero)
    numbers = {"fraction_nonzero_ce": frac_ce, "fraction_nonzero_margin": frac_cw,
               "median_grad_norm_ce": float(norms.median()) if len(norms) else 0.0,
               "threshold": GRAD_FRACTION_MIN}
    if frac_ce >= GRAD_FRACTION_MIN:
        return SanityCheck("input_gradients", "PASS", numbers,
                           f"{100 * frac_ce:.1f}% of examples have a non-zero input gradient")
    if frac_cw >= GRAD_FRACTION_MIN:
        why = ("the CE-loss input gradient is exactly zero on "
               f"{100 * (1 - frac_ce):.1f}% of examples but the margin-loss gradient is not: "
               "gradient masking by softmax saturation (over-confident logits); trust the "
               "CW / AutoAttack (DLR) numbers, not CE-PGD")
    else:
        why = (f"the input gradient is exactly zero on {100 * (1 - frac_ce):.1f}% of "
               "examples for CE and margin losses: shattered gradients (a non-differentiable "
               "or zero-derivative operation, e.g. input quantization/thresholding); "
               "gradient attacks cannot progress, use BPDA or black-box attacks")
    return SanityCheck("input_gradients", "WARN", numbers, why)


@torch.no_grad()
def _determinism_check(model: nn.Module, x: Tensor, batch_size: int,
                       device: torch.device) -> SanityCheck:
    xb = _to_float(x[:batch_size].to(device))
    a, b = model(xb), model(xb)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    same_pred = bool((a.argmax(1) == b.argmax(1)).all())
    numbers = {"max_abs_logit_diff": diff, "max_abs_logit": scale, "examples": len(xb)}
    if same_pred and diff <= 1e-4 * max(1.0, scale):
        return SanityCheck("deterministic", "PASS", numbers,
                           "two forward passes on the same inputs agree")
    return SanityCheck("deterministic", "WARN", numbers,
                       "the model's output changes between identical forward passes: "
                       "stochastic gradients (randomized defense); evaluate with EOT "
                       "(AutoAttack version='rand')")


def _pgd_spec(name: str, eps: float, loss: str = "ce", steps: int = GRID_STEPS) -> _Spec:
    """Cheap PGD for the checks: step 2.5·ε/steps (Madry et al.), random start."""
    return _Spec(name, "pgd", eps=eps, step_size=2.5 * eps / steps, steps=steps, loss=loss)


def _sanity_checks(model: nn.Module, x: Tensor, y: Tensor, results: list[AttackResult],
                   specs: list[_Spec], *, protocol: str, norm: str, seed: int,
                   batch_size: int, device: torch.device, num_classes: int,
                   progress: bool) -> list[SanityCheck]:
    n = len(y)
    slack = _slack(n)
    clean = results[0].correct
    checks = [_input_gradient_check(model, x, y, batch_size, device),
              _determinism_check(model, x, batch_size, device)]
    by_name = {r.name: r for r in results}

    def run(spec: _Spec) -> AttackResult:
        return _run_attack(model, x, y, spec, clean=clean, norm="Linf", seed=seed,
                           batch_size=batch_size, device=device, progress=progress)

    aa = by_name.get("autoattack")
    if norm == "Linf":
        eps = max(s.eps for s in specs if s.kind != "clean")
        # ε grid
        grid_eps = [eps / 2, eps, 2 * eps]
        grid = [run(_pgd_spec(f"pgd10@{_format_eps(e)}", e)) for e in grid_eps]
        accs = [results[0].accuracy] + [r.accuracy for r in grid]
        counts = [int(clean.sum())] + [r.num_correct for r in grid]
        rises = [i for i in range(1, len(counts)) if counts[i] > counts[i - 1] + slack]
        numbers = {"eps": [0.0] + grid_eps, "accuracy": accs, "attack": "pgd10 random start",
                   "step_size": "2.5*eps/10", "slack_examples": slack}
        checks.append(SanityCheck(
            "eps_monotonic", "WARN" if rises else "PASS", numbers,
            "accuracy rises with eps: the attack fails to optimise, a sign of obfuscated "
            "gradients (or stochastic gradients); a correct evaluation can only get worse "
            "with a larger budget" if rises else "accuracy does not increase with eps"))

        # large ε
        big = max(LARGE_EPS, 4 * eps)
        # margin loss: a random start at a huge eps can land where softmax saturates and
        # CE gradients vanish even for a healthy model
        large = run(_pgd_spec(f"cw10@{_format_eps(big)}", big, loss="cw"))
        threshold = min(0.10, 1 / num_classes + 0.05)
        numbers = {"eps": big, "accuracy": large.accuracy, "threshold": threshold,
                   "attack": "pgd10, CW margin loss, random start"}
        ok = large.accuracy <= threshold
        checks.append(SanityCheck(
            "large_eps", "PASS" if ok else "WARN", numbers,
            f"accuracy at eps={big:.3g} is near zero" if ok else
            f"{100 * large.accuracy:.1f}% of examples survive eps={big:.3g}, where almost any "
            "image is reachable: gradient masking (shattered/obfuscated gradients) makes "
            "the attack fail, so the robust accuracy at the real eps is overstated"))

        # PGD vs FGSM
        fgsm_result = by_name.get("fgsm") or run(
            _Spec(f"fgsm@{_format_eps(eps)}", "fgsm", eps=eps, random_start=False))
        fgsm_eps = fgsm_result.settings["eps"]
        pgds = [r for r in results if r.settings.get("attack") == "pgd"
                and r.settings["loss"] == "ce" and r.settings["eps"] >= fgsm_eps - 1e-12]
        pgds += [r for r in grid if r.settings["eps"] >= fgsm_eps - 1e-12]
        worse = [r.name for r in pgds if r.num_correct > fgsm_result.num_correct + slack]
        numbers = {"fgsm_eps": fgsm_eps, "fgsm": fgsm_result.accuracy,
                   **{r.name: r.accuracy for r in pgds}, "slack_examples": slack}
        checks.append(SanityCheck(
            "pgd_vs_fgsm", "WARN" if worse else "PASS", numbers,
            f"{', '.join(worse)} is weaker than single-step FGSM: the loss surface is "
            "locally non-smooth or misleading, typical of gradient masking (obfuscated "
            "gradients) where a large single step jumps past what small steps cannot"
            if worse else "iterative PGD is at least as strong as FGSM"))

        # more iterations / restarts / AutoAttack
        candidates = [r for r in results if r.settings.get("attack") == "pgd"]
        candidates.append(grid[1])  # PGD-10 at the main eps
        pairs = []
        for weak in candidates:
            for strong in candidates:
                same = (strong.settings["eps"] == weak.settings["eps"]
                        and strong.settings["loss"] == weak.settings["loss"])
                more = (strong.settings["steps"] * strong.settings["restarts"]
                        > weak.settings["steps"] * weak.settings["restarts"])
                if same and more:
                    pairs.append((weak, strong))
            if aa is not None and aa.settings["eps"] >= weak.settings["eps"] - 1e-12:
                pairs.append((weak, aa))
        bad = [f"{s.name} > {w.name}" for w, s in pairs if s.num_correct > w.num_correct + slack]
        numbers = {r.name: r.accuracy for pair in pairs for r in pair}
        numbers["slack_examples"] = slack
        if pairs:  # nothing comparable for e.g. protocol "cw" alone
            checks.append(SanityCheck(
                "more_iterations", "WARN" if bad else "PASS", numbers,
                f"a stronger attack is weaker ({'; '.join(bad)}): the attack does not "
                "converge, suggesting stochastic or obfuscated gradients" if bad else
                "more steps, restarts and AutoAttack do not raise accuracy"))

    # black box
    if protocol != "dnr":
        white = [r for r in results if r.name not in ("clean", "autoattack")]
        if aa is not None and "broken_by" in aa.details:
            k = aa.details["broken_by"].get("square", 0)
            numbers = {"square_broke": k, "source": "AutoAttack cascade (5000 queries, after "
                       "APGD-CE, APGD-T, FAB-T)", "slack_examples": slack}
            checks.append(_black_box_verdict(k, slack, numbers))
        elif aa is None:
            survivors = clean.clone()
            for r in white:
                survivors &= r.correct
            eps = max(r.settings["eps"] for r in white)
            k = _square_survivors(model, x, y, survivors, eps=eps, norm=norm, seed=seed,
                                  batch_size=batch_size, device=device)
            if k is not None:
                numbers = {"square_broke": k, "white_box_survivors": int(survivors.sum()),
                           "eps": eps, "queries": SQUARE_QUERIES, "slack_examples": slack}
                checks.append(_black_box_verdict(k, slack, numbers))
    return checks


def _black_box_verdict(broken: int, slack: int, numbers: dict[str, Any]) -> SanityCheck:
    if broken <= slack:
        return SanityCheck("black_box", "PASS", numbers,
                           f"Square broke {broken} examples the white-box attacks missed")
    return SanityCheck("black_box", "WARN", numbers,
                       f"black-box Square broke {broken} examples every white-box attack "
                       "missed: gradients point in uninformative directions (gradient "
                       "masking / obfuscated gradients); the white-box numbers overstate "
                       "robustness")


# ----------------------------------------------------------------------------- public


def _normalize_norm(norm: str) -> str:
    key = str(norm).lower().replace("_", "")
    if key in ("linf", "inf", "l-inf"):
        return "Linf"
    if key == "l2":
        return "L2"
    raise EvaluationError(f"norm must be 'Linf' or 'L2', got {norm!r}")


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    protocol: str = "dnr",
    eps: float | None = None,
    norm: str = "Linf",
    subset: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    sanity: bool = True,
    num_classes: int | None = None,
    restarts: int | None = None,
) -> EvalReport:
    """Run ``protocol`` (see :data:`PROTOCOLS`) on ``model`` and return an :class:`EvalReport`.

    ``x``: NCHW images, uint8 (divided by 255 per batch) or float in [0,1]; ``y``: labels.
    ``subset``: evaluate a seeded random subset of that many examples (indices recorded).
    ``eps``: radius for every attack (default: each protocol's own). ``norm``: ``"Linf"``,
    or ``"L2"`` for ``autoattack`` only. ``restarts`` overrides pgd20/pgd50/cw restarts.
    ``device``: where to run (default: the model's device). Runs in fp32 and leaves the
    model as it was.
    """
    started = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    norm = _normalize_norm(norm)
    if norm == "L2" and protocol != "autoattack":
        raise EvaluationError(f"norm 'L2' is only supported by protocol 'autoattack' (the reference "
                         f"implementation); protocol {protocol!r} uses our FGSM/PGD, which "
                         "are l-inf only")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise EvaluationError(f"eps must be a positive number, got {eps!r}")
    if restarts is not None and restarts < 1:
        raise EvaluationError(f"restarts must be >= 1, got {restarts}")
    specs = _protocol_specs(protocol, eps, norm, restarts)
    if any(s.kind == "autoattack" for s in specs):
        _import_autoattack()  # fail before any work if the package is missing
    _check_images(x, y)
    device = torch.device(device) if device is not None else _model_device(model)
    show = _progress_enabled(progress)

    indices = select_subset(len(y), subset, seed)
    if indices is not None:
        rows = torch.tensor(indices, dtype=torch.long)
        x, y = x[rows.to(x.device)], y[rows.to(y.device)]
    y = y.long()
    n = len(y)
    if n == 0:
        raise EvaluationError("no examples to evaluate")

    with _fp32_eval(model, device) as m:
        if batch_size is None:
            batch_size = default_batch_size(m, tuple(x.shape[1:]), device)
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(m(_to_float(x[:1].to(device))).shape[1])

        results: list[AttackResult] = []
        t0 = time.perf_counter()
        clean = _predict_correct(m, x, y, batch_size, device, progress=show)
        results.append(AttackResult("clean", _mean(clean), clean,
                                    _spec_settings(specs[0], norm, seed, batch_size),
                                    seconds=time.perf_counter() - t0))
        for spec in specs[1:]:
            if spec.kind == "autoattack":
                r = _run_autoattack(m, x, y, spec, clean=clean, norm=norm, seed=seed,
                                    batch_size=batch_size, device=device,
                                    num_classes=num_classes, progress=show)
            else:
                r = _run_attack(m, x, y, spec, clean=clean, norm=norm, seed=seed,
                                batch_size=batch_size, device=device, progress=show)
            results.append(r)
        checks = (_sanity_checks(m, x, y, results, specs, protocol=protocol, norm=norm,
                                 seed=seed, batch_size=batch_size, device=device,
                                 num_classes=num_classes, progress=show)
                  if sanity else [])

    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "pyautoattack": _package_version("pyautoattack"),
                "dnr": _package_version("torch-dnr")}
    return EvalReport(protocol=protocol, results=results, sanity=checks,
                      subset_indices=indices, num_examples=n, seed=int(seed),
                      versions=versions, device=str(device), norm=norm,
                      num_classes=num_classes, batch_size=batch_size,
                      seconds=time.perf_counter() - started)


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Clean accuracy in fp32 and eval mode (for validation during training)."""
    if len(y) == 0:
        return 0.0
    device = _model_device(model)
    with _fp32_eval(model, device) as m:
        return _mean(_predict_correct(m, x, y.long(), batch_size, device))


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step_size: float,
                 steps: int, batch_size: int = 256, random_start: bool = True,
                 generator: torch.Generator | None = None) -> float:
    """PGD (CE, 1 restart) robust accuracy in fp32, counted as in :func:`evaluate_model`
    (clean and adversarial correct)."""
    if len(y) == 0:
        return 0.0
    device = _model_device(model)
    y = y.long()
    spec = _Spec("pgd", "pgd", eps=eps, step_size=step_size, steps=steps,
                 random_start=random_start)
    with _fp32_eval(model, device) as m:
        clean = _predict_correct(m, x, y, batch_size, device)
        correct = _attack_correct(m, x, y, spec, batch_size=batch_size, device=device,
                                  generator=generator, attack_mask=clean)
    return _mean(correct & clean)


# Interim: the protocol registry (to be replaced by the robustness package).
from dnr.registry import PROTOCOLS as _PROTOCOLS  # noqa: E402

for _name in ("dnr", "pgd20", "pgd50", "cw", "autoattack", "full"):
    _PROTOCOLS.register(_protocol_specs, name=_name)
