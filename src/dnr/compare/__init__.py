"""``dnr compare``: several sparsity methods, one recipe, one table.

Every method trains with the same config, seed, data and budget (only ``sparsity.method``
differs) into ``OUT/<method>/``, so the rows differ by the method alone. The job is
resumable at the granularity of runs: a finished run (``eval.json``) is reused, an
interrupted one resumes from its checkpoint, and a run directory trained with another
config is refused rather than mixed into the table. Everything that can be refused
(names, seeds, configs, existing directories) is checked before anything trains.

One seed says nothing about whether a gap between two methods is more than seed noise.
With ``seeds`` (``--seeds 0,1,2``) every method trains once per seed into
``OUT/<method>/seed<k>/``, and each method is compared with the reference (and with
``static``) by the paired difference over seeds with its 95 % t interval (:mod:`dnr.stats`);
``noise_floor`` trains the reference again with seeds ``k + 1000``: "reference against
itself" is the interval that identical configurations differ by.

Outputs: ``OUT/comparison.json`` (rows + the shared config + per-seed summaries and paired
differences), ``OUT/comparison.md`` (the tables) and ``OUT/comparison.png`` (clean vs.
worst-case robust accuracy per method, mean ± s.d. over seeds).

The package, one concept a module: :mod:`~dnr.compare.plan` (what to train, checked before
anything trains), :mod:`~dnr.compare.run` (training the plan, writing the outputs),
:mod:`~dnr.compare.rows` (a finished run as a row), :mod:`~dnr.compare.statistics` (per-seed
means and paired differences), :mod:`~dnr.compare.document` (comparison.md / .json) and
:mod:`~dnr.compare.plot` (comparison.png).
"""

from __future__ import annotations

from dnr.compare.document import comparison_document, comparison_json, comparison_table
from dnr.compare.plan import (
    Action,
    ComparePlan,
    check_seeds,
    method_configs,
    parse_seeds,
    plan_compare,
    plan_run,
    select_methods,
)
from dnr.compare.plot import plot_comparison
from dnr.compare.protocol import (
    COMPARISON_JSON,
    COMPARISON_MD,
    COMPARISON_PNG,
    IMAGES_SEEN_NOTE,
    NOISE_SEED_OFFSET,
)
from dnr.compare.rows import run_row
from dnr.compare.run import run_compare
from dnr.compare.statistics import seed_statistics

__all__ = [
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "IMAGES_SEEN_NOTE",
    "NOISE_SEED_OFFSET",
    "Action",
    "ComparePlan",
    "check_seeds",
    "comparison_document",
    "comparison_json",
    "comparison_table",
    "method_configs",
    "parse_seeds",
    "plan_compare",
    "plan_run",
    "plot_comparison",
    "run_compare",
    "run_row",
    "seed_statistics",
    "select_methods",
]
