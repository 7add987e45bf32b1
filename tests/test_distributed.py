"""torchrun / DDP training on CPU with gloo: two real processes per scenario.

The scenarios share one module-level set of runs (a 1-process run and a 2-rank run of the
same tiny DNR configuration), so the processes start a handful of times, not per test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dnr.checkpoints import load_checkpoint
from dnr.config import Config, from_dict, load_config
from dnr.data import BatchLoader, load_dataset
from dnr.data.loader import Split
from dnr.distributed import Distributed, RankDivergenceError, tensor_checksum
from dnr.robustness import clean_accuracy, engine, pgd_accuracy
from dnr.robustness.protocols import AttackSpec
from dnr.rundir import RunDir
from dnr.sparsity import Progress, build_sparsity
from dnr.training import setup as training_setup
from dnr.training import train, train_step
from dnr.training.setup import build_optimizer, model_for
from helpers import (
    QUIET,
    REFERENCE_DNR,
    assert_same_weights,
    metrics,
    strip_timing,
    tiny_overrides,
)

WORLD = 2
EPOCHS = 3


def _config(**extra: Any) -> Config:
    # 192 training images, global batch 32: 6 steps an epoch, 16 images per rank and step.
    overrides = {**REFERENCE_DNR, "train__epochs": EPOCHS, "eval__subset": 32, **extra}
    return load_config(None, tiny_overrides(**overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, port: int) -> None:
    """What torchrun sets for each process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def _spawn(fn: Any, *args: Any) -> None:
    mp.spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=True)


def _record_masks(record: Path | None, fail_at: int, corrupt_at: int) -> None:
    """Wrap the method's epoch hook: save its masks after every call (per rank), raise
    KeyboardInterrupt at epoch ``fail_at``, or flip one mask bit on rank 1 at ``corrupt_at``."""
    real_build = training_setup.build_sparsity

    def build(*args: Any, **kwargs: Any) -> Any:
        method = real_build(*args, **kwargs)
        hook, seen = method.on_epoch_end, []

        def on_epoch_end(progress: Progress) -> dict[str, Any]:
            out = hook(progress)
            epoch, rank = progress.epoch + 1, int(os.environ["RANK"])
            if epoch == corrupt_at and rank == 1:
                name, mask = next(iter(method.masking.masks.items()))
                mask.view(-1)[0] = ~mask.view(-1)[0]
            seen.append({k: v.clone() for k, v in method.masking.masks.items()})
            if record is not None:
                torch.save(seen, record / f"masks_rank{rank}.pt")
            if epoch == fail_at:
                raise KeyboardInterrupt
            return out

        method.on_epoch_end = on_epoch_end
        return method

    training_setup.build_sparsity = build


def _train_worker(
    rank: int,
    port: int,
    cfg: dict[str, Any],
    out: str,
    record: str | None,
    resume: bool,
    fail_at: int,
    corrupt_at: int,
    fail_step: int = -1,
) -> None:
    _join(rank, port)
    _record_masks(Path(record) if record else None, fail_at, corrupt_at)
    if fail_step > 0:  # interrupt both ranks inside this optimizer step
        import dnr.training.step as step_module

        real, calls = step_module.hybrid_loss, [0]

        def flaky(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == fail_step:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        step_module.hybrid_loss = flaky
    try:
        train(from_dict(cfg), out.format(rank=rank), resume=resume, show_progress=False, log=print)
    except KeyboardInterrupt:
        if fail_at < 0 and fail_step < 0:
            raise
        Path(out.format(rank=rank) + f".interrupted{rank}").touch()


def _run(
    cfg: Config,
    out: Path | str,
    *,
    record: Path | None = None,
    resume: bool = False,
    fail_at: int = -1,
    corrupt_at: int = -1,
    fail_step: int = -1,
) -> None:
    _spawn(
        _train_worker,
        cfg.to_dict(),
        str(out),
        str(record) if record else None,
        resume,
        fail_at,
        corrupt_at,
        fail_step,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference_dnr_run: Path) -> Path:
    """``single/``: one process (the session's reference DNR run: this config, one thread);
    ``rank0/`` + ``rank1/``: the two ranks of one torchrun run, each told to write into its
    own directory (rank 1 must write nothing)."""
    base = tmp_path_factory.mktemp("dist")
    (base / "single").symlink_to(reference_dnr_run)
    _run(_config(), base / "rank{rank}", record=base)
    return base


@pytest.mark.slow
def test_masks_are_identical_on_every_rank_after_every_rewiring(runs: Path) -> None:
    rank0 = torch.load(runs / "masks_rank0.pt", weights_only=True)
    rank1 = torch.load(runs / "masks_rank1.pt", weights_only=True)
    assert len(rank0) == len(rank1) == EPOCHS
    for epoch, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (epoch, name)
    # The rewirings really moved weights (else equality would prove nothing) ...
    moved = sum(int((rank0[0][n] != rank0[1][n]).sum()) for n in rank0[0])
    assert moved > 0
    # ... and kept the global budget exactly: the 1-process run's count of kept weights.
    kept = [sum(int(m.sum()) for m in masks.values()) for masks in rank0]
    total = sum(m.numel() for m in rank0[0].values())
    single = load_checkpoint(RunDir(runs / "single").last_checkpoint)["sparsity"]["masks"]
    assert kept == [sum(int(m.sum()) for m in single.values())] * EPOCHS
    assert kept[0] == round(0.1 * total)


@pytest.mark.slow
def test_only_rank_zero_writes(runs: Path) -> None:
    assert not (runs / "rank1").exists()
    run = RunDir(runs / "rank0")
    for path in (run.config, run.metrics, run.last_checkpoint, run.best_checkpoint):
        assert path.is_file(), path
    assert run.model_weights.is_file()
    assert run.model_meta.is_file()
    records = metrics(runs / "rank0")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    # The epoch's figures cover the global batch: every training image once.
    assert all(r["train_images"] == 192 for r in records)


@pytest.mark.slow
def test_two_ranks_match_one_process_within_the_batchnorm_tolerance(runs: Path) -> None:
    """Same data, order, augmentation and attack starts; the one difference is that each
    rank's BatchNorm normalises its 16 images instead of the global 32 (no SyncBatchNorm
    on CPU). After 18 steps that leaves the conv and linear weights 5.5 % (of their norm)
    from the 1-process run's. The tolerance, 10 %, is half of what one plausible bug does:
    a gradient summed over the ranks instead of averaged (the same run at twice the
    learning rate) ends 19 % away; a 1-process run at batch 16 ends 13 % away. The exact
    check of the sharding and averaging is the one-step test below."""
    single = load_file(str(RunDir(runs / "single").model_weights))
    dist = load_file(str(RunDir(runs / "rank0").model_weights))
    assert single.keys() == dist.keys()
    diff = torch.cat([(single[k] - dist[k]).flatten() for k in single if k.endswith("weight")])
    norm = torch.cat([single[k].flatten() for k in single if k.endswith("weight")])
    relative = float(diff.norm() / norm.norm())
    assert relative < 0.10, relative
    a, b = metrics(runs / "single"), metrics(runs / "rank0")
    assert [r["train_images"] for r in a] == [r["train_images"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 0.05


def _step_worker(rank: int, port: int, cfg_dict: dict[str, Any], out: str) -> None:
    """One step through DDP on a rank's half of a batch vs one process on all of it (BN in
    eval mode, so per-rank statistics play no part): the same update up to rounding."""
    _join(rank, port)
    cfg = from_dict(cfg_dict)
    dist, device = Distributed.setup("cpu")
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = model_for(cfg, data)
    reference = copy.deepcopy(model)

    def parts(net: torch.nn.Module) -> tuple[Any, Any, Progress]:
        opt = build_optimizer(cfg, net)
        method = build_sparsity(cfg, net, opt, torch.Generator().manual_seed(1))
        return opt, method, Progress(step=0, epoch=0, epochs=1, steps_per_epoch=2)

    ref_opt, ref_method, ref_prog = parts(reference)
    opt, method, prog = parts(model)
    ddp = dist.wrap(model, device)
    model.eval()
    reference.eval()
    loader = BatchLoader(data.train, 32, device, shuffle=True, augment=True, seed=3)
    gen = torch.Generator().manual_seed(5)
    for x, y in list(loader.epoch(0))[:2]:
        noise = torch.rand(x.shape, generator=gen)
        train_step(reference, ref_opt, x, y, cfg, ref_method, ref_prog, noise=noise)
        mine = slice(rank * 16, (rank + 1) * 16)
        train_step(ddp, opt, x[mine], y[mine], cfg, method, prog, noise=dist.shard(noise))
    worst = max(
        float((a - b).abs().max()) for a, b in zip(model.parameters(), reference.parameters())
    )
    Path(out.format(rank=rank)).write_text(json.dumps({"max_diff": worst}))
    dist.close()


@pytest.mark.slow
def test_a_ddp_step_on_half_batches_equals_one_step_on_the_whole_batch(tmp_path) -> None:
    _spawn(_step_worker, _config().to_dict(), str(tmp_path / "step{rank}.json"))
    for rank in range(WORLD):
        worst = json.loads((tmp_path / f"step{rank}.json").read_text())["max_diff"]
        assert worst < 1e-5, (rank, worst)


def _eval_worker(rank: int, port: int, cfg_dict: dict[str, Any], weights: str, out: str) -> None:
    _join(rank, port)
    dist, _ = Distributed.setup("cpu")
    model, val = _linear_model(), load_dataset(from_dict(cfg_dict).data).val
    model.load_state_dict(torch.load(weights, weights_only=True))
    result = _val_figures(model.eval(), val, dist)
    Path(out.format(rank=rank)).write_text(json.dumps(result))
    dist.close()


def _linear_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


def _fitted_model(cfg: Config) -> tuple[torch.nn.Module, Split]:
    """A linear classifier fitted in 50 full-batch steps: 94 % clean, and PGD flips some
    (the tiny CNNs of these tests predict one class, which PGD cannot change)."""
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = _linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data.train.x.float() / 255, data.train.y
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), data.val


def _val_figures(model: torch.nn.Module, val: Split, dist: Distributed | None) -> dict[str, float]:
    # batch 8 over 64 validation images: 8 batches, alternating between the ranks
    return {
        "clean": clean_accuracy(model, val.x, val.y, batch_size=8, dist=dist),
        "pgd": pgd_accuracy(
            model,
            val.x,
            val.y,
            eps=8 / 255,
            step_size=2 / 255,
            steps=3,
            batch_size=8,
            generator=torch.Generator().manual_seed(11),
            dist=dist,
        ),
    }


@pytest.mark.slow
def test_sharded_validation_reports_the_single_process_numbers(tmp_path) -> None:
    """Sharding changes which process evaluates a batch, not what is computed: the model is
    fitted once here and shipped to the ranks, and the single-process figures are taken at
    the ranks' thread count. (Fitting in each process, or evaluating at another thread
    count, changes the float reduction order, which moves examples near the decision
    boundary: 0.875 vs 0.890625 clean with torch 2.14. That is float rounding, not
    sharding, and no equality test can hold across it.)"""
    cfg = _config()
    model, val = _fitted_model(cfg)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    _spawn(
        _eval_worker, cfg.to_dict(), str(tmp_path / "model.pt"), str(tmp_path / "eval{rank}.json")
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as _join sets it on every rank
    try:
        expected = _val_figures(model, val, None)
    finally:
        torch.set_num_threads(threads)
    assert 0 < expected["pgd"] < expected["clean"]  # attacked rows and survivors to split
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"eval{rank}.json").read_text()) == expected


def test_each_shard_attacks_its_batches_from_the_single_process_starts(monkeypatch) -> None:
    """Sharding skips other ranks' batches but still draws their random starts, so every
    batch is attacked from exactly the start it gets in one process."""
    model, val = _fitted_model(_config())
    spec = AttackSpec("pgd", "pgd", eps=8 / 255, step_size=2 / 255, steps=1)
    seen: dict[tuple[int, ...], torch.Tensor] = {}

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        x_adv = real_pgd(*args, **kwargs)
        seen[tuple(args[2].tolist())] = x_adv  # keyed by the batch's labels
        return x_adv

    real_pgd = engine.pgd
    monkeypatch.setattr(engine, "pgd", spy)

    def attack(shard: tuple[int, int]) -> tuple[torch.Tensor, dict[tuple[int, ...], Any]]:
        seen.clear()
        correct = engine.attack_correct(
            model,
            val.x,
            val.y,
            spec,
            batch_size=8,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(11),
            attack_mask=torch.ones(len(val.y), dtype=torch.bool),
            shard=shard,
        )
        return correct, dict(seen)

    whole, starts = attack((0, 1))
    first, starts0 = attack((0, 2))
    second, starts1 = attack((1, 2))
    assert len(starts) == 8
    assert len(starts0) == len(starts1) == 4
    assert starts.keys() == starts0.keys() | starts1.keys()
    for key, x_adv in {**starts0, **starts1}.items():
        assert torch.equal(x_adv, starts[key])
    assert torch.equal(first | second, whole)


@pytest.mark.slow
def test_diverging_masks_fail_loudly(tmp_path) -> None:
    with pytest.raises(Exception, match="differ across the 2 ranks"):
        _run(_config(), tmp_path / "run", corrupt_at=1)
    assert not RunDir(tmp_path / "run").model_weights.exists()


def test_check_same_passes_equal_values_outside_torchrun() -> None:
    Distributed().check_same(torch.tensor([1.0, 2.0]), "x")  # one process: nothing to compare
    a = tensor_checksum([torch.tensor([True, False, True])])
    b = tensor_checksum([torch.tensor([True, True, False])])
    assert a[0] == b[0]
    assert a[1] != b[1]
    assert issubclass(RankDivergenceError, RuntimeError)


@pytest.mark.slow
def test_an_interrupted_two_rank_run_resumes_to_the_same_result(runs: Path, tmp_path) -> None:
    cfg, out = _config(), tmp_path / "run"
    _run(cfg, out, fail_at=2)  # interrupted in epoch 2's hook: last.pt holds epoch 1
    assert (tmp_path / "run.interrupted0").exists()
    assert (tmp_path / "run.interrupted1").exists()
    assert len(metrics(out)) == 1
    shutil.copytree(out, tmp_path / "one")
    _run(cfg, out, resume=True)
    assert_same_weights(runs / "rank0", out)
    assert strip_timing(metrics(out)) == strip_timing(metrics(runs / "rank0"))
    # The same interrupted run, resumed by a single process: the global batch is the same.
    train(cfg, tmp_path / "one", resume=True, **QUIET)
    assert [r["epoch"] for r in metrics(tmp_path / "one")] == [1, 2, 3]
    assert metrics(tmp_path / "one")[0] == metrics(out)[0]


@pytest.mark.slow
def test_a_two_rank_run_resumes_mid_epoch_from_a_step_checkpoint(tmp_path) -> None:
    """Step checkpoints hold the global partial sums (rank 0 carries them on) and give
    every rank rank 0's BN statistics, so the resumed run ends bitwise as the straight one,
    the last weights (not only the selected ones) and every epoch's figures included."""
    cfg, out = _config(train__checkpoint_every=2), tmp_path / "run"
    _run(cfg, out, fail_step=9)  # epoch 2's third step: the checkpoint after step 8 holds
    state = load_checkpoint(RunDir(out).last_checkpoint)["state"]
    assert (state["epochs_done"], state["batch"]) == (1, 2)
    straight = tmp_path / "straight"
    _run(cfg, straight)  # the same config: step checkpoints also sync the ranks' BN buffers
    _run(cfg, out, resume=True)
    for which in ("model", "last"):
        ckpt = [load_checkpoint(RunDir(r).last_checkpoint)["model"] for r in (straight, out)]
        if which == "model":
            ckpt = [load_file(str(RunDir(r).model_weights)) for r in (straight, out)]
        for key in ckpt[0]:
            assert torch.equal(ckpt[0][key], ckpt[1][key]), (which, key)
    for got, want in zip(strip_timing(metrics(out)), strip_timing(metrics(straight)), strict=True):
        differ = {k for k in set(got) | set(want) if got.get(k) != want.get(k)}
        assert not differ, (got["epoch"], differ)


def test_loader_shards_are_the_single_process_batches() -> None:
    x = torch.arange(13 * 3 * 4 * 4, dtype=torch.uint8).reshape(13, 3, 4, 4)
    split = Split(x, torch.arange(13))
    one = BatchLoader(split, 4, "cpu", shuffle=True, augment=True, seed=2, padding=1)
    shards = [
        BatchLoader(split, 4, "cpu", shuffle=True, augment=True, seed=2, padding=1, rank=r, world=2)
        for r in range(2)
    ]
    assert len(one) == 4
    assert all(len(s) == 3 for s in shards)
    for whole, (a, b) in zip(one.epoch(1), zip(*(s.epoch(1) for s in shards), strict=True)):
        assert torch.equal(torch.cat([a[0], b[0]]), whole[0])
        assert torch.equal(torch.cat([a[1], b[1]]), whole[1])
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        BatchLoader(split, 5, "cpu", shuffle=False, augment=False, rank=0, world=2)


@pytest.mark.slow
def test_torchrun_cli_trains_evaluates_and_logs_once(tmp_path) -> None:
    """The README's command, as a user types it."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "dnr",
        "train",
        "--out",
        str(out),
        *tiny_overrides(sparsity__method="dnr", sparsity__density=0.1, train__epochs=2),
        "eval.subset=32",
        "eval.sanity=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/2") == 1, proc.stdout  # rank 0 logs, rank 1 does not
    assert proc.stdout.count("run directory:") == 1
    assert "torchrun: 2 processes (gloo), 16 images per process and step" in proc.stdout
    meta = json.loads(RunDir(out).model_meta.read_text())
    assert meta["sparsity"]["method"] == "dnr"
    assert RunDir(out).eval_json.is_file()
    # A global batch that does not split evenly is refused on every rank, exit code 2.
    bad = [*cmd[: cmd.index("--out")], "--out", str(tmp_path / "bad"), "train.batch_size=33"]
    proc = subprocess.run(bad, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "must be a multiple of the 2 torchrun processes" in proc.stderr


def test_compare_under_torchrun_is_refused_with_the_workflow(monkeypatch, tmp_path) -> None:
    from dnr.compare import run_compare
    from dnr.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train each method under torchrun"):
        run_compare(None, tmp_path / "cmp", ["dense", "dnr"])
    assert not (tmp_path / "cmp").exists()


def test_a_download_under_torchrun_is_refused_when_the_data_is_missing(monkeypatch, tmp_path):
    from dnr.errors import ConfigError
    from dnr.runner import run_train

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(
        None, ["data.name=cifar10", f"data.root={tmp_path / 'none'}", "data.download=true"]
    )
    with pytest.raises(ConfigError, match="download it first in one process"):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "none").exists()
    assert not (tmp_path / "run").exists()


def test_setup_outside_torchrun_is_one_process_and_refuses_bad_launches() -> None:
    from dnr.errors import ConfigError

    dist, device = Distributed.setup("cpu", env={})
    assert (dist.rank, dist.world, dist.enabled, dist.is_main) == (0, 1, False, True)
    assert device == torch.device("cpu")
    with pytest.raises(ConfigError, match="each rank uses cuda:LOCAL_RANK"):
        Distributed.setup("cuda:1", env={"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        Distributed.setup("cpu", env={"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        Distributed.setup("cpu", "nccl", env={"WORLD_SIZE": "2", "RANK": "1"})
