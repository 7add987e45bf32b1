"""Running a comparison: the planned runs in order, then its documents and figure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dnr.compare.document import comparison_document, comparison_json, comparison_table
from dnr.compare.plan import ComparePlan, plan_compare
from dnr.compare.plot import plot_comparison
from dnr.compare.protocol import COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG
from dnr.compare.rows import run_row
from dnr.compare.statistics import seed_statistics
from dnr.config import ConfigError
from dnr.distributed import Distributed
from dnr.fileio import atomic_write_json, atomic_write_text
from dnr.runner import run_train

__all__ = ["run_compare"]


def run_compare(
    cfg_path: str | Path | None,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
    noise_floor: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train + evaluate each method (once per seed) into ``out_dir``; write the comparison.

    ``seeds`` None: the config's train.seed alone, into ``out_dir/<method>`` (as before
    seeds existed). Several seeds, or ``noise_floor``: ``out_dir/<method>/seed<k>``, and the
    paired differences against ``reference`` (default dnr, else the first method) and
    ``static``. ``noise_floor`` also trains the reference with every seed + 1000.

    Returns the path of ``comparison.md``. Rerunning the same command continues an
    interrupted comparison: finished runs are reused, an interrupted one resumes.
    """
    _refuse_under_torchrun()
    plan = plan_compare(
        cfg_path,
        out_dir,
        methods,
        overrides,
        seeds=seeds,
        reference=reference,
        noise_floor=noise_floor,
        log=log,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    _train_runs(plan, progress, log)
    return _write_comparison(plan, cfg_path, overrides)


def _refuse_under_torchrun() -> None:
    """Each method's test evaluation runs on rank 0 alone; the other ranks would wait for
    the next method's process group longer than its timeout allows."""
    if Distributed.launched():
        raise ConfigError(
            "dnr compare runs in one process: train each method under torchrun with "
            "`torchrun ... -m dnr train --out OUT/METHOD sparsity.method=METHOD ...`, then "
            "run the same dnr compare command without torchrun (it reuses finished runs)"
        )


def _train_runs(plan: ComparePlan, progress: bool | None, log: Callable[[str], None]) -> None:
    """Train, resume or skip each run as planned, in order."""
    runs = plan.runs
    for i, (method, seed) in enumerate(runs, 1):
        run_dir, action = plan.where(method, seed), plan.actions[method, seed]
        prefix = f"[{i}/{len(runs)}] {plan.label(method, seed)}:"
        if action == "reuse":
            log(f"{prefix} reusing the finished run in {run_dir} (eval.json)")
            continue
        if action == "resume":
            log(f"{prefix} resuming {run_dir} from its last checkpoint ...")
        else:
            log(f"{prefix} training into {run_dir} ...")
        run_train(
            plan.configs[method, seed],
            run_dir,
            resume=action == "resume",
            progress=progress,
            log=lambda event: log(str(event)),  # training's records, as their console lines
        )


def _write_comparison(
    plan: ComparePlan, cfg_path: str | Path | None, overrides: Sequence[str]
) -> Path:
    """comparison.json, comparison.md and comparison.png from the finished runs."""
    out = plan.out
    rows, table = comparison_table(out, plan.methods, plan.seeds if plan.per_seed else None)
    noise_rows = [run_row(plan.where(plan.reference, k), plan.reference) for k in plan.noise_seeds]
    stats = (
        seed_statistics(rows, plan.methods, plan.reference, noise_rows) if plan.per_seed else None
    )
    atomic_write_json(
        out / COMPARISON_JSON, comparison_json(plan, cfg_path, overrides, rows, noise_rows, stats)
    )
    atomic_write_text(out / COMPARISON_MD, comparison_document(rows, table, stats, plan.seeds))
    plot_comparison(rows, out / COMPARISON_PNG)
    return out / COMPARISON_MD
