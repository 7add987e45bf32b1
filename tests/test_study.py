"""The study runner (experiments/): a table's queue trains, measures part by part, resumes
from its files, shares identical runs between tables, and reports paired intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from experiments.protocol import SCALES, TABLES, Table, runs_of
from experiments.report import write_report
from experiments.runner import PARTS, Study, claim
from experiments.study import main

from dnr.config import ConfigError
from dnr.modelfile import read_model_meta

TINY = SCALES["tiny"]
SMALL = Table(
    "small",
    "does the runner work?",
    ("dnr", "static-uniform"),
    {"": ("sparsity.density=0.2",)},
    noise_floor=True,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    """The small table at the tiny scale, every run measured (AutoAttack left out: it has
    its own test below)."""
    root = tmp_path_factory.mktemp("study")
    study = Study(TINY, root / "runs", root / "results", root, log=lambda _: None)
    for run in runs_of(SMALL, (0, 1)):
        assert study.process(run)
    return study


@pytest.mark.slow
def test_every_run_is_measured_part_by_part(study: Study) -> None:
    runs = runs_of(SMALL, (0, 1))
    assert [r.key for r in runs] == [
        "dnr/seed0", "static-uniform/seed0", "dnr/seed1", "static-uniform/seed1",
        "noise/dnr/seed1000", "noise/dnr/seed1001",
    ]  # fmt: skip
    for run in runs:
        result = json.loads(study.result_path(run).read_text())
        assert list(result["parts"]) == [p for p in PARTS if p != "autoattack"]
        assert study.missing(run) == []
        assert result["config"]["train"]["seed"] == run.seed
        assert result["config"]["sparsity"]["density"] == 0.2
        parts = result["parts"]
        assert parts["pgd20"]["examples"] == TINY.test_subset
        assert parts["final"]["examples"] == TINY.final_subset
        assert len(result["history"]) == 4
        assert "train_loss" in result["history"][0]
        selected = result["parts"]["train"]["selection"]  # the epoch the weights come from
        assert selected["by"] == "val_pgd_acc"
        assert 1 <= selected["epoch"] <= 4
        assert parts["costs"]["deployed_as"] == "masked dense"
        meta = read_model_meta(result["run_dir"])  # the nonzeros are the mask's at most
        assert 0 < parts["costs"]["weights"] <= meta["sparsity"]["num_active"]
        assert parts["costs"]["latency_ms"] > 0
        assert parts["costs"]["macs"] > 0


@pytest.mark.slow
def test_autoattack_is_a_part_asked_for_later(study: Study) -> None:
    """A study run without AutoAttack gets it by a later ``run --autoattack N``, on the
    selected weights, without training again."""
    run = runs_of(SMALL, (0,))[1]
    before = json.loads(study.result_path(run).read_text())
    later = Study(TINY, study.runs_root, study.results_root, study.data_dir, autoattack=4)
    assert later.missing(run) == ["autoattack"]
    assert later.process(run)
    result = json.loads(study.result_path(run).read_text())
    assert result["parts"]["autoattack"]["examples"] == 4
    assert 0 <= result["parts"]["autoattack"]["accuracy"]["autoattack"] <= 1
    assert {k: v for k, v in result["parts"].items() if k != "autoattack"} == before["parts"]


@pytest.mark.slow
def test_a_finished_run_is_not_trained_or_measured_again(study: Study) -> None:
    run = runs_of(SMALL, (0,))[0]
    before = study.result_path(run).stat().st_mtime_ns
    assert study.process(run)
    assert study.result_path(run).stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_lost_part_is_measured_again_alone(study: Study) -> None:
    run = runs_of(SMALL, (0,))[1]
    path = study.result_path(run)
    result = json.loads(path.read_text())
    pgd20 = result["parts"].pop("pgd20")
    path.write_text(json.dumps(result))
    assert study.missing(run) == ["pgd20"]
    assert study.process(run)
    again = json.loads(path.read_text())
    assert again["parts"]["pgd20"]["accuracy"] == pgd20["accuracy"]  # seeded: the same number
    assert again["parts"]["train"] == result["parts"]["train"]


@pytest.mark.slow
def test_an_identical_run_of_another_table_is_shared_not_retrained(study: Study) -> None:
    other = Table("other", "the same run again?", ("dnr",), {"": ("sparsity.density=0.2",)})
    run = runs_of(other, (0,))[0]
    assert study.process(run)
    pointer = json.loads(study.result_path(run).read_text())
    assert pointer["same_run_as"] == "tiny/small/dnr/seed0.json"
    assert "parts" not in pointer
    original = json.loads((study.results_root / pointer["same_run_as"]).read_text())
    shared = study.load(run)
    assert shared["parts"] == original["parts"]
    assert shared["table"] == "other"
    assert study.missing(run) == []
    assert not study.run_dir(run).exists()
    later = Study(TINY, study.runs_root, study.results_root, study.data_dir, autoattack=2)
    assert later.missing(run) == ["autoattack"]  # a part asked for later lands in the original


@pytest.mark.slow
def test_a_result_made_with_another_config_is_refused(study: Study) -> None:
    run = runs_of(SMALL, (1,))[1]
    path = study.result_path(run)
    saved = path.read_text()
    result = json.loads(saved)
    result["config"]["train"]["epochs"] = 99
    path.write_text(json.dumps(result))
    try:
        with pytest.raises(ConfigError, match="another configuration .*train.epochs"):
            study.process(run)
    finally:
        path.write_text(saved)


@pytest.mark.slow
def test_the_report_pairs_seeds_and_shows_the_noise_floor(study: Study) -> None:
    path = write_report(study, SMALL, runs_of(SMALL, (0, 1)))
    summary = json.loads(path.with_suffix(".json").read_text())
    entry = summary["settings"][""]
    diff = entry["variants"]["static-uniform"]["vs_reference"]["pgd20"]
    results = {
        (v, k): json.loads((study.results_root / f"tiny/small/{v}/seed{k}.json").read_text())
        for v in ("dnr", "static-uniform")
        for k in (0, 1)
    }
    by_hand = [
        100
        * (
            results["static-uniform", k]["parts"]["pgd20"]["accuracy"]["pgd20"]
            - results["dnr", k]["parts"]["pgd20"]["accuracy"]["pgd20"]
        )
        for k in (0, 1)
    ]
    assert diff["seeds"] == [0, 1]
    assert diff["diffs"] == pytest.approx(by_hand)
    assert entry["noise_floor"]["pgd20"]["n"] == 2
    text = path.read_text()
    assert "the noise floor" in text
    assert "Runs measured: 6 of 6 (AutoAttack on " in text
    assert path.with_suffix(".png").stat().st_size > 0


def test_a_claimed_run_is_left_to_its_worker_and_a_stale_claim_is_taken_over(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "lock"
    with claim(lock) as mine:
        assert mine
        with claim(lock) as again:
            assert not again  # held (here by this process itself)
    with claim(lock) as mine:  # the file stays; a claim its holder let go is free
        assert mine
    holder = subprocess.Popen(  # a worker that dies holding the claim
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a');"
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    with claim(lock) as mine:
        assert not mine
    holder.kill()
    holder.wait()
    with claim(lock) as mine:  # the kernel dropped the dead worker's claim
        assert mine


def test_the_command_line_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["plan", "main", "--scale", "tiny", "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["run", "main", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["run", "main", "--workers", "0"]) == 2
    empty = tmp_path / "empty"  # a data folder without the npz files: one line, no traceback
    empty.mkdir()
    args = ["--data-dir", str(empty), "--runs", str(tmp_path), "--results", str(tmp_path)]
    assert main(["run", "main", *args]) == 2
    assert "study run: error:" in capsys.readouterr().err
    assert main(["plan"]) == 2
    assert "name a table" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "bogus"])
    assert exit_info.value.code == 2


def test_workers_get_the_command_without_its_workers_option() -> None:
    from experiments.study import _worker_argv

    for argv in (
        ["run", "main", "--workers", "2", "--seeds", "0"],
        ["run", "main", "--workers=2", "--seeds", "0"],
    ):
        assert _worker_argv(argv) == ["run", "main", "--seeds", "0"]


def test_the_plan_lists_every_table_run(tmp_path: Path, capsys) -> None:
    args = ["--scale", "tiny", "--results", str(tmp_path), "--runs", str(tmp_path)]
    assert main(["plan", "compression", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(runs_of(TABLES["compression"], TINY.seeds))
    assert all(line.startswith("todo") for line in lines)


@pytest.mark.slow
def test_a_study_stopped_by_sigterm_continues_where_it_stopped(tmp_path: Path) -> None:
    """The device path: a call cut short by a time limit (``timeout -s TERM``) leaves a
    resumable checkpoint; the next call resumes it and finishes the queue."""
    import signal
    import time

    args = ["--scale", "tiny", "--seeds", "0", "--results", str(tmp_path / "results")]
    args += ["--runs", str(tmp_path / "runs")]
    cmd = [sys.executable, "-m", "experiments.study", "run", "beta", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = tmp_path / "runs" / "tiny" / "beta" / "beta=0" / "dnr" / "seed0" / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(first.glob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert b"rerun the same study command" in stderr
    assert b"Traceback" not in stderr
    study = Study(TINY, tmp_path / "runs", tmp_path / "results", tmp_path)
    runs = runs_of(TABLES["beta"], (0,))
    assert study.missing(runs[0])[0] == "train"  # stopped inside the first run's training
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"beta=0/dnr/seed0: resume" in done.stdout
    assert all(study.missing(run) == [] for run in runs)


def test_packed_data_loads_as_the_same_arrays_and_splits(tmp_path: Path) -> None:
    """``study pack`` splits the data into chunks small enough to carry to a device; read
    through its manifest, a run sees the same images, labels and splits."""
    import numpy as np
    from experiments.pack import pack
    from experiments.protocol import Scale

    from dnr.config import load_config
    from dnr.data.loader import load_dataset

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for name, n in (("a.npz", 300), ("b.npz", 200), ("t.npz", 100)):
        np.savez_compressed(
            src / name,
            x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            y=rng.integers(0, 10, n),
            classes=np.array([f"c{i}" for i in range(10)]),
        )
    chunk_mib = (src / "a.npz").stat().st_size / 2**20 / 2.5  # a into 3 chunks, b into 2
    pack([src / "a.npz", src / "b.npz"], src / "t.npz", tmp_path / "packed", chunk_mib)
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert len(manifest["train"]) == 5
    assert len(manifest["test"]) == 1
    scale = Scale("s", "", "vgg16_cifar10", (), None, 0, None, data=(("a.npz", "b.npz"), "t.npz"))
    base = ["data.val_size=50", "data.subset=400"]
    splits = [
        load_dataset(load_config(None, [*base, *scale.data_overrides(d)]).data)
        for d in (src, tmp_path / "packed")
    ]
    for part in ("train", "val", "test"):
        a, b = getattr(splits[0], part), getattr(splits[1], part)
        assert torch.equal(a.x, b.x), part
        assert torch.equal(a.y, b.y), part
    assert main(["pack", "--scale", "tiny", "--out", str(tmp_path / "p")]) == 2  # no files
