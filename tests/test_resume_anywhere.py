"""Interrupt anywhere, resume to the same bits: SIGKILL at chosen points, SIGTERM, NaN.

The killed runs are real processes (``os.kill(SIGKILL)`` from inside, at an exact point
chosen by patching), so nothing after the kill runs: no ``finally``, no flush.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import dnr.training.step as step_module
from dnr.checkpoints import load_checkpoint
from dnr.config import load_config
from dnr.rundir import RunDir
from dnr.training import train
from dnr.training.guards import NonFiniteLossError
from helpers import QUIET, assert_same_weights, metrics, strip_timing, tiny_overrides

pytestmark = pytest.mark.slow  # every test here trains, most in killed subprocesses

# 128 images, batch 32: 4 steps an epoch; a step-level checkpoint every 2 steps.
OVERRIDES = tiny_overrides(
    sparsity__method="dnr",
    sparsity__density=0.3,
    sparsity__redistribution=1.0,
    train__epochs=3,
    train__checkpoint_every=2,
    data__subset=128,
)

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import dnr.robustness.engine as engine
    import dnr.runner as runner
    import dnr.training.loop as loop
    import dnr.training.setup as setup
    import dnr.training.step as step
    import dnr.training.writer as writer
    from dnr.config import load_config
    from dnr.training import train

    point, out, *overrides = sys.argv[1:]
    kind, _, n = point.partition(":")
    n = int(n or 0)
    calls = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def counted(real, after=False):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n and not after:
                die()
            result = real(*args, **kwargs)
            if calls["n"] == n and after:
                die()
            return result
        return wrapper

    if kind == "step":  # inside the n-th training step
        step.hybrid_loss = counted(step.hybrid_loss)
    elif kind == "write":  # the n-th checkpoint write: temp file written, never renamed
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("last.pt"):
                calls["n"] += 1
                if calls["n"] == n:
                    die()
            return real_replace(src, dst)
        os.replace = replace
    elif kind == "rewire":  # right after the n-th rewiring, before its checkpoint
        real_build = setup.build_sparsity
        def build(*args, **kwargs):
            method = real_build(*args, **kwargs)
            method.on_epoch_end = counted(method.on_epoch_end, after=True)
            return method
        setup.build_sparsity = build
    elif kind == "start":  # config.yaml written, no checkpoint yet
        writer.RunWriter.start = counted(writer.RunWriter.start, after=True)
    elif kind == "validate":  # inside the n-th validation
        loop.pgd_accuracy = counted(loop.pgd_accuracy)
    elif kind == "eval":  # inside the final evaluation's n-th PGD call (not validation's)
        real_evaluate = runner.evaluate_loaded
        def evaluate_loaded(*args, **kwargs):
            engine.pgd = counted(engine.pgd)
            return real_evaluate(*args, **kwargs)
        runner.evaluate_loaded = evaluate_loaded
    cfg = load_config(None, overrides)
    if os.environ.get("CHAOS_EVAL"):  # the user's command: train, then evaluate
        runner.run_train(cfg, out, resume=True, progress=False, log=print)
    else:
        resume = os.path.exists(os.path.join(out, "checkpoints", "last.pt"))
        train(cfg, out, resume=resume, show_progress=False, log=print)
    """
)


def _python(
    script: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _assert_same_run(a: Path, b: Path) -> None:
    assert_same_weights(a, b)
    assert strip_timing(metrics(a)) == strip_timing(metrics(b))
    la, lb = load_checkpoint(RunDir(a).last_checkpoint), load_checkpoint(RunDir(b).last_checkpoint)
    for name, mask in la["sparsity"]["masks"].items():
        assert torch.equal(mask, lb["sparsity"]["masks"][name]), name
    for key, value in la["optimizer"]["state"].items():
        assert torch.equal(
            value["momentum_buffer"], lb["optimizer"]["state"][key]["momentum_buffer"]
        )


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "run.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def straight(script: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = _python(script, "none", str(out), *OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    ("point", "resumes_at"),
    [
        # step 7 is epoch 2's third batch; the step checkpoint after step 6 survives it
        ("step:7", "at epoch 2/3, after batch 2"),
        # the 3rd write of last.pt (after step 6) dies before its rename: epoch 1's stays
        ("write:3", "at epoch 2/3\n"),
        # epoch 1's rewiring done, its checkpoint not written: back to step 2 of epoch 1
        ("rewire:1", "at epoch 1/3, after batch 2"),
    ],
)
def test_sigkill_anywhere_resumes_to_the_same_bits(
    script: Path, straight: Path, tmp_path, point: str, resumes_at: str
) -> None:
    out = tmp_path / "run"
    killed = _python(script, point, str(out), *OVERRIDES)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _python(script, "none", str(out), *OVERRIDES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumes_at in resumed.stdout + "\n", resumed.stdout
    _assert_same_run(straight, out)


def test_step_checkpoints_lose_at_most_checkpoint_every_steps(tmp_path, monkeypatch) -> None:
    """In-process: interrupted in step 7, the resumed run trains steps 7-12 only."""
    cfg = load_config(None, OVERRIDES)
    real = step_module.hybrid_loss
    calls = {"n": 0}

    armed = {"on": True}

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7 and armed["on"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "hybrid_loss", counting)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", **QUIET)
    state = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)["state"]
    assert (state["epochs_done"], state["batch"], state["step"]) == (1, 2, 6)
    armed["on"] = False
    calls["n"] = 0
    lines: list[str] = []
    train(
        cfg, tmp_path / "run", resume=True, show_progress=False, log=lambda e: lines.append(str(e))
    )
    assert calls["n"] == 12 - 6
    assert any("after batch 2" in line for line in lines)


def test_sigterm_saves_the_state_exits_cleanly_and_resumes(tmp_path, straight: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dnr", "train", "--no-eval", "--out", str(out), *OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = RunDir(out).last_checkpoint
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")  # a very fast machine
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM at" in stderr
    assert "the state is saved" in stderr
    assert f"Continue with: dnr train --resume --out {out}" in stderr
    assert "Traceback" not in stderr
    state = load_checkpoint(last)["state"]
    assert state["step"] >= 2
    resumed = subprocess.run(
        [sys.executable, "-m", "dnr", "train", "--no-eval", "--resume", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(straight, out)


def test_a_non_finite_loss_stops_before_its_state_is_saved(tmp_path, monkeypatch) -> None:
    cfg = load_config(None, [*OVERRIDES, "train.checkpoint_every=0"])
    real = step_module.hybrid_loss
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 2
            out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(step_module, "hybrid_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, batch 2;"):
        train(cfg, tmp_path / "run", **QUIET)
    last = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)
    assert last["state"]["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len(metrics(tmp_path / "run")) == 1


def test_rewirings_inside_an_epoch_survive_a_mid_epoch_resume(tmp_path, monkeypatch) -> None:
    """With rewire_every, an epoch's rewiring records accumulate until its end: a step
    checkpoint must carry them, or the epoch's metrics lose the ones before it."""
    cfg = load_config(None, [*OVERRIDES, "sparsity.rewire_every=2", "train.checkpoint_every=3"])
    train(cfg, tmp_path / "straight", **QUIET)
    real, calls = step_module.hybrid_loss, {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 2, after the step-6 checkpoint and the step-6 rewiring
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "hybrid_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", **QUIET)
    monkeypatch.undo()
    train(cfg, tmp_path / "run", resume=True, **QUIET)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "run")
    assert len(a[1]["rewire"]) == 2  # steps 6 and 8 of epoch 2 (5-8)
    assert strip_timing(a) == strip_timing(b)


#: Where a requeued run can die, with how many times a process reaches each point in
#: OVERRIDES' run from scratch (3 epochs of 4 steps, a step checkpoint every 2 steps, a
#: method hook per epoch, 3 validations, 5 PGD calls in the final evaluation and its sanity
#: checks): the chaos test draws its kills from these.
KILL_POINTS = {"start": 1, "step": 12, "write": 6, "rewire": 3, "validate": 3, "eval": 5}


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_at_seeded_random_moments_the_same_resume_command_ends_in_the_same_bits(
    script: Path, tmp_path, seed: int
) -> None:
    """A requeue loop: SIGKILL at random moments (start-up, mid-epoch, mid-checkpoint
    write, right after a rewiring, in validation, in the final evaluation), each time the
    same train-and-evaluate command with --resume, until it finishes."""
    rng = random.Random(seed)
    env = {"CHAOS_EVAL": "1"}
    straight = tmp_path / "straight"
    done = _python(script, "none", str(straight), *OVERRIDES, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    middle = ["rewire", "step", "validate", "write"]
    kinds = ["start", *rng.sample(middle, len(middle)), "eval"]  # every phase, seeded order
    out, kills = tmp_path / "run", []
    for kind in kinds:
        point = f"{kind}:{rng.randint(1, KILL_POINTS[kind])}"
        proc = _python(script, point, str(out), *OVERRIDES, env=env)
        if proc.returncode == -signal.SIGKILL:
            kills.append(point)
        else:  # the point lies in work an earlier kill made the run skip: it finished
            assert proc.returncode == 0, f"{point}: {proc.stderr[-3000:]}"
    assert kills[:1] == ["start:1"], kills
    assert kills[-1].startswith("eval:"), kills  # the last one always lands in the evaluation
    assert len(kills) >= 4, kills  # a point in work a resume skipped does not fire
    proc = _python(script, "none", str(out), *OVERRIDES, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(straight, out)
    evaluated = [json.loads((d / "eval.json").read_text())["results"] for d in (straight, out)]
    for result in (r for results in evaluated for r in results):
        result.pop("seconds")  # the clock is the one thing a kill may change
    assert evaluated[0] == evaluated[1]
