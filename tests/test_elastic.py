"""torchrun's elastic restarts: a worker SIGKILLed at any moment, the same command re-run.

``torchrun --max-restarts N ... train --resume --out RUN`` is the requeue loop of
docs/reliability.md done by torchrun itself: when one worker dies, the agent stops the
others and starts every worker again with the same arguments. The run must end with the
bits of an uninterrupted one, whichever rank dies and wherever: before the first checkpoint,
mid-epoch, right after a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REFERENCE_DNR, assert_same_weights, metrics, strip_timing, tiny_overrides

pytestmark = pytest.mark.slow  # three torchrun launches of two processes each

# Runs under torchrun as each worker: SIGKILLs itself inside the n-th training step of this
# process when DNR_TEST_KILLS names this attempt and rank ("attempt:rank/step,...").
WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import dnr.training.step as step
    from dnr.cli import main

    plan = [p.split(":") for p in os.environ.get("DNR_TEST_KILLS", "").split(",") if p]
    kills = {attempt: tuple(map(int, where.split("/"))) for attempt, where in plan}
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    where = kills.get(attempt)
    if where is not None and where[0] == int(os.environ["RANK"]):
        real, calls = step.hybrid_loss, [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == where[1]:
                marker = os.path.join(os.environ["DNR_TEST_MARKS"], f"killed{attempt}")
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        step.hybrid_loss = dying
    sys.exit(main(sys.argv[1:]))
    """
)

# 192 training images, global batch 32: 6 steps an epoch; a step checkpoint every 4 steps.
OVERRIDES = tiny_overrides(**REFERENCE_DNR, train__epochs=3, train__checkpoint_every=4)


def _torchrun(tmp_path: Path, out: Path, kills: str) -> subprocess.CompletedProcess[str]:
    worker, config = tmp_path / "worker.py", tmp_path / "config.yaml"
    worker.write_text(WORKER)
    config.write_text("train: {}\n")  # the defaults; OVERRIDES make the run tiny
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "3",
        "--monitor-interval",
        "0.5",
        # a c10d rendezvous on a free port (docs/reliability.md: with the static one, or
        # with the rendezvous store shared, a restarted worker may read its dead peer's
        # address and wait for it)
        "--standalone",
        str(worker),
        "train",
        "--config",
        str(config),
        "--resume",
        "--no-eval",
        "--out",
        str(out),
        *OVERRIDES,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DNR_TEST_KILLS": kills,
        "DNR_TEST_MARKS": str(tmp_path),
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # the recipe's: a fresh store per attempt
    }
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_elastic_restarts_after_kills_anywhere_end_in_the_uninterrupted_bits(tmp_path) -> None:
    straight = _torchrun(tmp_path, tmp_path / "straight", kills="")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # attempt 0: rank 1 dies in step 2, before any checkpoint (the restart starts afresh);
    # attempt 1: rank 0 dies in step 7, after the epoch-1 checkpoint; attempt 2: rank 1 dies
    # in the third step after resuming mid-epoch; attempt 3 finishes.
    chaotic = _torchrun(tmp_path, tmp_path / "chaotic", kills="0:1/2,1:0/7,2:1/3")
    assert chaotic.returncode == 0, chaotic.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("killed*")) == ["killed0", "killed1", "killed2"]
    log = chaotic.stdout + chaotic.stderr
    assert log.count("no checkpoint yet") == 2, log[-3000:]  # the first launch, and attempt 1
    assert_same_weights(tmp_path / "straight", tmp_path / "chaotic")
    want = strip_timing(metrics(tmp_path / "straight"))
    assert strip_timing(metrics(tmp_path / "chaotic")) == want
    assert [r["epoch"] for r in want] == [1, 2, 3]
