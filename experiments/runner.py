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

import fcntl
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from dnr.compare import plan_run
from dnr.config import Config, ConfigError, as_current, load_config
from dnr.data.loader import load_dataset
from dnr.fileio import atomic_write_json, read_jsonl
from dnr.modelfile import load_model
from dnr.rundir import RunDir
from dnr.runner import run_train
from dnr.training.writer import config_difference
from experiments.measure import AUTOATTACK, PGD20, attacks, costs, final_model
from experiments.protocol import Run, Scale

__all__ = ["Study", "claim"]

#: the parts of a result, in the order they are measured
PARTS = ("train", "paper", "pgd20", "final", "costs", "autoattack")


@contextmanager
def claim(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` while the body runs; False when another process (or another claim in
    this one) holds it. An advisory ``flock``: the kernel drops it when its holder dies, so
    no stale claim outlives a killed worker, and the file itself is never removed."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _selection(run_dir: Path) -> Any:
    """How the run's weights were chosen: metric, epoch and value (model.json)."""
    return json.loads(RunDir(run_dir).model_meta.read_text()).get("selection")


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
        """The run's own result file ({} if none yet): its parts, or a pointer to the run of
        another table it is the same as (``same_run_as``)."""
        path = self.result_path(run)
        return json.loads(path.read_text()) if path.is_file() else {}

    def source(self, run: Run) -> Path:
        """The result file that holds the run's parts: its own, or the one it points to."""
        pointer = self.read(run).get("same_run_as")
        return self.results_root / pointer if pointer else self.result_path(run)

    def load(self, run: Run) -> dict[str, Any]:
        """The run's result with its parts, followed through a pointer ({} if none yet)."""
        own, source = self.read(run), self.source(run)
        if not own or not source.is_file():
            return own
        found = json.loads(source.read_text())
        return {**found, **{k: own[k] for k in ("table", "variant", "setting", "seed")}}

    def missing(self, run: Run) -> list[str]:
        """The parts of ``run`` not measured yet (autoattack only when it is asked for)."""
        parts = self.load(run).get("parts", {})
        wanted = [p for p in PARTS if p != AUTOATTACK or self._aa_images() > 0]
        return [p for p in wanted if p not in parts]

    def _aa_images(self) -> int:
        return self.scale.autoattack if self.autoattack is None else self.autoattack

    def _lock(self, result: Path) -> Path:
        name = str(result.relative_to(self.results_root)).replace("/", "_")
        return self.runs_root / ".locks" / f"{name}.lock"

    def _twin(self, cfg: Config, run: Run) -> Path | None:
        """A trained run of the same config from another table (never a pointer itself)."""
        wanted = cfg.to_dict()
        for path in sorted((self.results_root / self.scale.name).rglob("*.json")):
            if path == self.result_path(run):
                continue
            other = json.loads(path.read_text())
            if (
                "same_run_as" not in other
                and "train" in other.get("parts", {})
                and as_current(other.get("config")) == wanted
            ):
                return path
        return None

    def _check_config(self, run: Run, cfg: Config) -> None:
        saved = self.read(run).get("config")
        if saved is not None and as_current(saved) != cfg.to_dict():
            raise ConfigError(
                f"{self.result_path(run)} was made with another configuration "
                f"({config_difference(saved, cfg.to_dict())}): move it away to redo the run"
            )

    def process(self, run: Run) -> bool:
        """Bring ``run`` up to date; False when another worker holds it (or the run it is
        the same as)."""
        cfg = self.config(run)
        self._check_config(run, cfg)
        if not self.read(run):
            twin = self._twin(cfg, run)
            if twin is not None:  # a pointer, not a copy: one run, one set of parts
                header = {k: v for k, v in self._header(run, cfg).items() if k != "parts"}
                pointer = {**header, "same_run_as": str(twin.relative_to(self.results_root))}
                atomic_write_json(self.result_path(run), pointer)
                self.log(f"{run.table} {run.key}: the same run as {pointer['same_run_as']}")
        source = self.source(run)
        with claim(self._lock(source)) as mine:
            if not mine:
                return False
            result = json.loads(source.read_text()) if source.is_file() else self._header(run, cfg)
            if "train" not in result["parts"]:
                self._train(run, cfg, result)
            self._measure(source, cfg, result)
            return True

    def _header(self, run: Run, cfg: Config) -> dict[str, Any]:
        return {
            "scale": self.scale.name,
            "table": run.table,
            "variant": run.variant,
            "setting": run.setting,
            "seed": run.seed,
            "overrides": list(run.overrides),
            "config": cfg.to_dict(),
            "parts": {},
        }

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
            "selection": _selection(run_dir),
        }
        paper = json.loads(RunDir(run_dir).eval_json.read_text())
        result["parts"]["paper"] = {
            "accuracy": {r["name"]: r["accuracy"] for r in paper["results"]},
            "examples": paper["num_examples"],
            "seconds": paper.get("seconds"),
        }
        atomic_write_json(self.result_path(run), result)

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

    def _measure(self, path: Path, cfg: Config, result: dict[str, Any]) -> None:
        """Measure the parts ``result`` (the file ``path``) lacks, saving after each."""
        run_dir = Path(result["run_dir"])
        train = result["parts"]["train"]
        if "selection" not in train:  # results from before the field existed
            train["selection"] = _selection(run_dir)
            atomic_write_json(path, result)
        wanted = [p for p in PARTS if p != AUTOATTACK or self._aa_images() > 0]
        todo = [p for p in wanted if p not in result["parts"]]
        if not todo:
            return
        data = load_dataset(replace(cfg.data, subset=None))
        x, y, classes = data.test.x, data.test.y, data.meta.num_classes
        for part in todo:
            self.log(f"{path.relative_to(self.results_root)}: measuring {part}")
            result["parts"][part] = self._part(part, run_dir, x, y, classes)
            atomic_write_json(path, result)
