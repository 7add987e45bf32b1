"""Run the study's queue: train each run, then measure it part by part.

A run's result file (``results/<scale>/<table>/<setting>/<variant>/seed<k>.json``) is
written after training and again after every measured part, atomically, so a session that
ends mid-study loses at most the part in progress; the next ``run`` continues where the
files say it stopped (an interrupted training resumes from its checkpoint). Workers on one
machine share a queue: each run is claimed by an exclusive lock file, and a lock whose
process is gone is taken over. A run whose config equals one already measured in another
table (the main table's d = 0.05 in the compression table, say) is not trained again: its
result is copied, saying from where.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from dnr.artifacts import RunDir, load_model
from dnr.compare import plan_run
from dnr.config import Config, load_config
from dnr.data.loader import load_dataset
from dnr.fileio import atomic_write_json, read_jsonl
from dnr.runner import run_train
from experiments.measure import AUTOATTACK, PGD20, attacks, costs, final_model
from experiments.protocol import Run, Scale

__all__ = ["Study", "claim"]

#: the parts of a result, in the order they are measured
PARTS = ("train", "paper", "pgd20", "final", "costs", "autoattack")


@contextmanager
def claim(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` (an exclusive file with our pid) while the body runs; False when another
    live process holds it. A lock left by a dead process is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass  # alive, another user's
            yield False
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _code_version() -> str:
    """The commit the study ran at (``+dirty`` when the tree had changes), or "unknown"."""
    try:
        here = Path(__file__).parent
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records, scalars only (per-layer maps and rewiring details left out)."""
    keep = (int, float, str, bool, type(None))
    return [
        {k: v for k, v in r.items() if isinstance(v, keep) or k in ("lasso", "hydra")}
        for r in read_jsonl(RunDir(run_dir).metrics)
    ]


@dataclass
class Study:
    """One scale's queue: where runs train, where results go, where the data lives."""

    scale: Scale
    runs_root: Path
    results_root: Path
    data_dir: Path
    autoattack: int | None = None  # None: the scale's
    log: Callable[[str], None] = print

    def config(self, run: Run) -> Config:
        overrides = [
            *self.scale.overrides,
            *self.scale.data_overrides(self.data_dir),
            "eval.protocol=dnr",
            f"eval.subset={self.scale.test_subset if self.scale.test_subset else 'null'}",
            *run.overrides,
            f"train.seed={run.seed}",
        ]
        return load_config(self.scale.config, overrides)

    def result_path(self, run: Run) -> Path:
        return self.results_root / self.scale.name / run.table / f"{run.key}.json"

    def run_dir(self, run: Run) -> Path:
        return self.runs_root / self.scale.name / run.table / run.key

    def read(self, run: Run) -> dict[str, Any]:
        path = self.result_path(run)
        return json.loads(path.read_text()) if path.is_file() else {}

    def missing(self, run: Run) -> list[str]:
        """The parts of ``run`` not measured yet (autoattack only when it is asked for)."""
        result = self.read(run)
        wanted = [p for p in PARTS if p != AUTOATTACK or self._aa_images() > 0]
        return [p for p in wanted if p not in result.get("parts", {})]

    def _aa_images(self) -> int:
        return self.scale.autoattack if self.autoattack is None else self.autoattack

    def _save(self, run: Run, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_path(run), result)

    def _twin(self, cfg: Config, run: Run) -> tuple[Path, dict[str, Any]] | None:
        """A result of the same config from another table, trained already."""
        wanted = cfg.to_dict()
        for path in sorted((self.results_root / self.scale.name).rglob("*.json")):
            if path == self.result_path(run) or path.parts[-1].startswith("_"):
                continue
            other = json.loads(path.read_text())
            if other.get("config") == wanted and "train" in other.get("parts", {}):
                return path, other
        return None

    def process(self, run: Run) -> bool:
        """Bring ``run`` up to date; False when another worker holds it."""
        lock = (
            self.runs_root / self.scale.name / ".locks" / f"{run.table}-{run.key}".replace("/", "_")
        )
        with claim(lock) as mine:
            if not mine:
                return False
            cfg = self.config(run)
            result = self.read(run) or {
                "scale": self.scale.name,
                "table": run.table,
                "variant": run.variant,
                "setting": run.setting,
                "seed": run.seed,
                "overrides": list(run.overrides),
                "config": cfg.to_dict(),
                "parts": {},
            }
            if "train" not in result["parts"]:
                twin = self._twin(cfg, run)
                if twin is not None:
                    path, other = twin
                    result.update({k: v for k, v in other.items() if k != "table"})
                    result.update(table=run.table, setting=run.setting, variant=run.variant)
                    result["same_run_as"] = str(path.relative_to(self.results_root))
                    self._save(run, result)
                    self.log(f"{run.table} {run.key}: the same run as {result['same_run_as']}")
                else:
                    self._train(run, cfg, result)
            self._measure(run, cfg, result)
            return True

    def _train(self, run: Run, cfg: Config, result: dict[str, Any]) -> None:
        run_dir = self.run_dir(run)
        action = plan_run(run.key, cfg, run_dir)
        started = time.perf_counter()
        if action != "reuse":
            self.log(f"{run.table} {run.key}: {action} into {run_dir}")
            run_train(cfg, run_dir, resume=action == "resume", progress=False, log=lambda _: None)
        history = _history(run_dir)
        result["run_dir"] = str(run_dir)
        result["history"] = history
        result["parts"]["train"] = {
            "code": _code_version(),
            "train_seconds": sum(float(r.get("train_seconds") or 0) for r in history),
            "wall_seconds": sum(float(r.get("wall_seconds") or 0) for r in history),
            "session_seconds": time.perf_counter() - started,
            "selection": json.loads(RunDir(run_dir).model_meta.read_text()).get("selection"),
        }
        paper = json.loads(RunDir(run_dir).eval_json.read_text())
        result["parts"]["paper"] = {
            "accuracy": {r["name"]: r["accuracy"] for r in paper["results"]},
            "examples": paper["num_examples"],
            "seconds": paper.get("seconds"),
        }
        self._save(run, result)

    def _part(self, part: str, run_dir: Path, x: Tensor, y: Tensor, classes: int) -> Any:
        """One part's measurement of the run in ``run_dir`` on the test set ``x, y``."""
        if part == "costs":
            return costs(run_dir, int(x.shape[-1]))
        protocol, subset = {
            PGD20: (PGD20, self.scale.test_subset),
            "final": (PGD20, self.scale.final_subset),
            AUTOATTACK: (AUTOATTACK, self._aa_images()),
        }[part]
        model = final_model(run_dir) if part == "final" else load_model(run_dir)
        restarts = self.scale.pgd20_restarts if protocol == PGD20 else None
        return attacks(model, x, y, protocol, subset, restarts=restarts, num_classes=classes)

    def _measure(self, run: Run, cfg: Config, result: dict[str, Any]) -> None:
        twin = self.results_root / result["same_run_as"] if "same_run_as" in result else None
        if twin is not None:  # the original may have been measured further since
            result["parts"] = {**json.loads(twin.read_text())["parts"], **result["parts"]}
            self._save(run, result)
        todo = [p for p in self.missing(run) if p not in ("train", "paper")]
        if not todo:
            return
        run_dir = Path(result["run_dir"])
        data = load_dataset(replace(cfg.data, subset=None))
        x, y, classes = data.test.x, data.test.y, data.meta.num_classes
        for part in todo:
            self.log(f"{run.table} {run.key}: measuring {part}")
            value = self._part(part, run_dir, x, y, classes)
            result["parts"][part] = value
            self._save(run, result)
            if twin is not None:  # one run, one measurement: the original gets it too
                original = json.loads(twin.read_text())
                original["parts"].setdefault(part, value)
                atomic_write_json(twin, original)
