"""Tracking: structured records on the log= hook, metrics.csv, TensorBoard, curves.png."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from dnr.cli import main
from dnr.config import ConfigError, load_config
from dnr.plots import CURVES_DPI, PANEL_INCHES, write_training_curves
from dnr.registry import LOGGERS
from dnr.rundir import RunDir
from dnr.training import RunWriter, train
from dnr.training.display import epoch_line
from dnr.training.loggers import (
    CsvLogger,
    Event,
    TensorBoardLogger,
    epoch_event,
    epoch_record,
    flatten,
    message,
    open_loggers,
    stage_event,
)
from helpers import QUIET, TIMING_KEYS, metrics, strip_timing, tiny_overrides

# A sparse (DNR) run, so records carry per-layer densities: 3 epochs, csv, tensorboard and
# a logger registered by the test (tracked_run).
TRACKED = {
    "sparsity__method": "dnr",
    "sparsity__density": 0.2,
    "train__loggers": "[csv,tensorboard,test-recorder]",
}

RECORD = {
    "epoch": 1,
    "step": 6,
    "lr": 0.1,
    "train_loss": 2.5,
    "train_clean_acc": 0.25,
    "train_adv_acc": None,
    "train_images": 192,
    "images_per_sec": 100.0,
    "val_clean_acc": 0.5,
    "val_pgd_acc": 0.125,
    "density": 0.2,
    "layer_density": {"features.0.weight": 0.3, "classifier.weight": 0.1},
    "rewire": [{"prune_rate": 0.05}],
}


def _png_size(path: Path) -> tuple[int, int]:
    """A PNG's size, read by PIL (which refuses a file that is not an image)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _csv_value(cell: str) -> Any:
    """A cell as metrics.jsonl holds it: empty is None, JSON where it parses, else text."""
    if cell == "":
        return None
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        return cell


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard itself reads the folder."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard (the track extra) does not import here",
    )
    events = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


# --- records -------------------------------------------------------------------------------


def test_epoch_event_is_a_dict_whose_str_is_the_console_line() -> None:
    event = epoch_event(RECORD, epochs=3)
    assert isinstance(event, dict)
    assert event["kind"] == "epoch"
    assert event["epochs"] == 3
    assert epoch_record(event) == RECORD
    assert str(event) == epoch_line(RECORD, 3)
    assert str(event).startswith("epoch 1/3 | loss 2.500 | train clean 25.0% adv -")


def test_message_and_stage_events_carry_their_fields_and_text() -> None:
    assert message("hello") == {"kind": "message", "text": "hello"}
    assert str(message("hello")) == "hello"
    stage = stage_event("finetune", 3, 5)
    assert (stage["kind"], stage["stage"], stage["first_epoch"], stage["last_epoch"]) == (
        "stage",
        "finetune",
        3,
        5,
    )
    assert str(stage) == "stage finetune: epochs 3-5"


def test_flatten_dots_nested_keys_and_keeps_lists() -> None:
    flat = flatten(RECORD)
    assert flat["layer_density.features.0.weight"] == 0.3
    assert flat["rewire"] == [{"prune_rate": 0.05}]
    assert "layer_density" not in flat
    assert flatten({"a": {"b": {"c": 1}}}, sep="/") == {"a/b/c": 1}


# --- csv -----------------------------------------------------------------------------------


def test_csv_has_one_row_per_epoch_and_a_header_that_grows_for_late_columns(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    logger = CsvLogger(run)
    logger.start([])
    first = {"epoch": 1, "train_loss": 0.1 + 0.2, "val_pgd_acc": None}
    second = {"epoch": 2, "train_loss": 1 / 3, "val_pgd_acc": 0.5, "density": 0.2}
    for record in (first, second):
        logger.log(epoch_event(record, 2))
    logger.log(message("not a row"))
    rows = _csv_rows(run.metrics_csv)
    assert list(rows[0]) == ["epoch", "train_loss", "val_pgd_acc", "density"]
    assert [float(r["train_loss"]) for r in rows] == [0.1 + 0.2, 1 / 3]  # exact round trip
    assert rows[0]["val_pgd_acc"] == ""
    assert rows[0]["density"] == ""
    assert rows[1]["density"] == "0.2"


def test_csv_start_rewrites_the_kept_epochs_only(tmp_path: Path) -> None:
    """A resume starts the logger with the kept history: rows of replayed epochs go."""
    run = RunDir(tmp_path)
    logger = CsvLogger(run)
    logger.start([])
    for epoch in (1, 2, 3):
        logger.log(epoch_event({"epoch": epoch, "train_loss": float(epoch)}, 3))
    again = CsvLogger(run)
    again.start([{"epoch": 1, "train_loss": 1.0}])
    assert [r["epoch"] for r in _csv_rows(run.metrics_csv)] == ["1"]
    again.start([])  # a fresh start leaves no stale file
    assert not run.metrics_csv.exists()


# --- config and errors ---------------------------------------------------------------------


def test_loggers_config_takes_names_in_any_case_and_refuses_unknown_ones() -> None:
    cfg = load_config(None, ["train.loggers=[CSV, TensorBoard]"])
    assert cfg.train.loggers == ["csv", "tensorboard"]
    assert load_config(None, []).train.loggers == []
    with pytest.raises(ConfigError, match=r"train.loggers: 'wandb' is not allowed.*csv"):
        load_config(None, ["train.loggers=[csv, wandb]"])


def test_jsonl_is_always_on_and_other_ranks_log_nothing(tmp_path: Path) -> None:
    assert [type(x).__name__ for x in open_loggers([], tmp_path).loggers] == ["JsonlLogger"]
    names = [type(x).__name__ for x in open_loggers(["csv", "jsonl"], tmp_path).loggers]
    assert names == ["JsonlLogger", "CsvLogger"]
    assert open_loggers(["csv"], tmp_path, enabled=False).loggers == []


def test_missing_tensorboard_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'torch-dnr\[track\]'"):
        TensorBoardLogger(RunDir(tmp_path))
    out = tmp_path / "run"
    overrides = tiny_overrides(train__loggers="[tensorboard]", train__epochs=1)
    assert main(["train", "--quiet", "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "torch-dnr[track]" in err[0]
    assert "Traceback" not in err[0]
    assert not RunDir(out).metrics.exists()  # failed before training


# --- curves --------------------------------------------------------------------------------


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    RunDir(path).metrics.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_png_has_a_density_panel_for_sparse_runs_only(tmp_path: Path) -> None:
    sparse = [
        {**RECORD, "epoch": e, "layer_density_init": {"features.0.weight": 0.2}} for e in (1, 2)
    ]
    dense = [{k: v for k, v in r.items() if "density" not in k} for r in sparse]
    _write_metrics(tmp_path / "sparse", sparse)
    _write_metrics(tmp_path / "dense", dense)
    width, height = (round(x * CURVES_DPI) for x in PANEL_INCHES)
    sparse_png = write_training_curves(tmp_path / "sparse")
    dense_png = write_training_curves(tmp_path / "dense")
    assert sparse_png == RunDir(tmp_path / "sparse").curves_plot
    assert sparse_png is not None
    assert dense_png is not None
    assert _png_size(sparse_png) == (3 * width, height)
    assert _png_size(dense_png) == (2 * width, height)
    _write_metrics(tmp_path / "empty", [])
    assert write_training_curves(tmp_path / "empty") is None


# --- end to end ----------------------------------------------------------------------------


class _Recorder:
    """A logger registered from outside the package: what it was given, in order."""

    runs: ClassVar[list[_Recorder]] = []

    def __init__(self, run: RunDir) -> None:
        self.run, self.calls = run, []
        _Recorder.runs.append(self)

    def start(self, history: list[dict[str, Any]]) -> None:
        self.calls.append(("start", history))

    def log(self, event: Event) -> None:
        self.calls.append(("log", event))

    def close(self) -> None:
        self.calls.append(("close", None))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Event]]]:
    """A 3-epoch DNR run with csv, tensorboard and a registered recorder, and every event
    its log= hook got."""
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard does not import here")
    LOGGERS.register(_Recorder, name="test-recorder")
    out = tmp_path_factory.mktemp("tracked") / "run"
    events: list[Event] = []
    cfg = load_config(None, tiny_overrides(**TRACKED))
    train(cfg, out, show_progress=False, log=events.append)
    yield out, events
    LOGGERS.unregister("test-recorder")


@pytest.mark.slow
def test_a_registered_logger_gets_the_hooks_events(tracked_run: tuple[Path, list[Event]]) -> None:
    out, events = tracked_run
    recorder = _Recorder.runs[0]
    assert recorder.run == RunDir(out)
    assert recorder.calls[0] == ("start", [])
    assert recorder.calls[-1] == ("close", None)
    logged = [e for kind, e in recorder.calls if kind == "log"]
    assert [epoch_record(e) for e in logged] == metrics(out)
    assert logged == [e for e in events if e["kind"] == "epoch"]


@pytest.mark.slow
def test_log_hook_receives_structured_records(tracked_run: tuple[Path, list[Event]]) -> None:
    out, events = tracked_run
    assert all(isinstance(e, dict) and "kind" in e for e in events)
    assert {e["kind"] for e in events} == {"message", "epoch"}
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [epoch_record(e) for e in epochs] == metrics(out)
    for event in epochs:
        assert event["epochs"] == 3
        assert {"train_loss", "val_clean_acc", "val_pgd_acc", "lr", "density"} <= set(event)
        assert set(event["layer_density"]) >= {"features.0.weight", "classifier.weight"}
        assert str(event) == epoch_line(epoch_record(event), 3)
    assert str(next(e for e in events if e["kind"] == "message")).startswith("device cpu")


@pytest.mark.slow
def test_csv_rows_equal_metrics_jsonl(tracked_run: tuple[Path, list[Event]]) -> None:
    out, _ = tracked_run
    records = metrics(out)
    rows = _csv_rows(RunDir(out).metrics_csv)
    assert len(rows) == len(records) == 3
    for row, record in zip(rows, records, strict=True):
        flat = flatten(record)
        assert {k: _csv_value(v) for k, v in row.items() if v != ""} == {
            k: v for k, v in flat.items() if v is not None
        }


@pytest.mark.slow
def test_tensorboard_scalars_equal_the_records(tracked_run: tuple[Path, list[Event]]) -> None:
    out, _ = tracked_run
    records = metrics(out)
    scalars = _tensorboard_scalars(RunDir(out).tensorboard)
    for tag in ("train_loss", "val_clean_acc", "val_pgd_acc", "lr", "density"):
        expected = [(r["epoch"], float(np.float32(r[tag]))) for r in records]
        assert scalars[tag] == expected, tag
    layer = "layer_density/features.0.weight"
    assert scalars[layer] == [
        (r["epoch"], float(np.float32(r["layer_density"]["features.0.weight"]))) for r in records
    ]
    assert "epoch" not in scalars
    assert "rewire" not in scalars


@pytest.mark.slow
def test_curves_png_is_written_and_dnr_report_embeds_it(
    tracked_run: tuple[Path, list[Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = tracked_run
    run = RunDir(out)
    width, height = (round(x * CURVES_DPI) for x in PANEL_INCHES)
    assert _png_size(run.curves_plot) == (3 * width, height)
    run.curves_plot.unlink()
    assert main(["report", str(out), "--no-latency"]) == 0
    assert f"training curves: {run.curves_plot}" in capsys.readouterr().out
    assert _png_size(run.curves_plot) == (3 * width, height)
    assert "![training curves](curves.png)" in run.report_md.read_text()


class _Killed(Exception):
    """Stands for a kill between an epoch's logs and its checkpoint."""


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_straight_runs_csv_and_tensorboard(
    tracked_run: tuple[Path, list[Event]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after epoch 2 was logged but before its checkpoint: the resume replays epoch
    2, and neither metrics.csv nor TensorBoard shows it twice."""
    straight, _ = tracked_run
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(**TRACKED))
    save_last, calls = RunWriter.save_last, []

    def killed_at_epoch_2(self: RunWriter, state: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise _Killed
        save_last(self, state)

    monkeypatch.setattr(RunWriter, "save_last", killed_at_epoch_2)
    with pytest.raises(_Killed):
        train(cfg, out, **QUIET)
    assert len(_csv_rows(RunDir(out).metrics_csv)) == 2  # epoch 2 was logged, not saved
    monkeypatch.setattr(RunWriter, "save_last", save_last)
    train(cfg, out, resume=True, **QUIET)

    def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    ours, theirs = RunDir(out), RunDir(straight)
    assert comparable(_csv_rows(ours.metrics_csv)) == comparable(_csv_rows(theirs.metrics_csv))
    assert strip_timing(metrics(out)) == strip_timing(metrics(straight))
    scalars = _tensorboard_scalars(ours.tensorboard)
    assert [step for step, _ in scalars["train_loss"]] == [1, 2, 3]
    assert scalars["val_pgd_acc"] == _tensorboard_scalars(theirs.tensorboard)["val_pgd_acc"]


def test_overwrite_clears_the_trackers_files_and_nothing_else(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.tensorboard.mkdir()
    events = run.tensorboard / "events.out.tfevents.1.host.1.0"
    events.write_bytes(b"x")
    mine = tmp_path / "mine.csv"
    for path in (run.metrics_csv, run.curves_plot, mine):
        path.write_text("x")
    assert {events, run.metrics_csv, run.curves_plot} <= set(run.artifacts())
    removed = RunWriter(tmp_path).clear()
    assert {events, run.metrics_csv, run.curves_plot} <= set(removed)
    assert not run.tensorboard.exists()
    assert mine.read_text() == "x"
