"""The demo (dense vs. static mask vs. DNR at 20x on the bundled digits) over several seeds.

The demo is one seed of a 4-epoch run on 1,437 tiny images, evaluated on 200: this says how
much of its table is the seed. Writes ``results/demo_seeds.{json,md}``.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --out runs/demo_seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dnr.config import load_config
from dnr.demo import DEMO_METHODS
from dnr.markdown import markdown_table
from dnr.runner import run_train

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    """Train and evaluate the demo's methods per seed; write the per-seed and mean table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    args = parser.parse_args()
    rows = []
    for method in DEMO_METHODS:
        for seed in args.seeds:
            run_dir = args.out / f"{method}_seed{seed}"
            cfg = load_config("demo", [f"sparsity.method={method}", f"train.seed={seed}"])
            _, report = run_train(
                cfg, run_dir, resume=run_dir.exists(), progress=False, log=lambda _msg: None
            )
            assert report is not None, "run_train evaluates the run it trains"
            accuracy = {r.name: r.accuracy for r in report.results}
            rows.append({"method": method, "seed": seed, **accuracy})
            print(rows[-1], flush=True)
    attacks = [k for k in rows[0] if k not in ("method", "seed")]
    table = [[r["method"], r["seed"], *(f"{100 * r[a]:.1f}" for a in attacks)] for r in rows]
    for method in DEMO_METHODS:
        mine = [r for r in rows if r["method"] == method]
        table.append(
            [
                f"**{method} mean**",
                "",
                *(f"**{100 * statistics.mean(r[a] for r in mine):.1f}**" for a in attacks),
            ]
        )
    md = markdown_table(["method", "seed", *(f"{a} %" for a in attacks)], table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_seeds.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "demo_seeds.md").write_text(
        "# The demo over seeds\n\n`python benchmarks/demo_seeds.py --seeds "
        + " ".join(map(str, args.seeds))
        + "` (CPU, 2 cores; 200 test images)\n\n"
        + md
        + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
