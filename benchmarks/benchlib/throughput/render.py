"""The throughput benchmark's Markdown report, written from its results dict alone.

Each section is its own function, so a report can be rendered again from a results JSON
(``render_markdown(json.load(...))``) without measuring anything.
"""

from __future__ import annotations

from typing import Any

from benchlib.machine import machine_lines
from benchlib.throughput.cases import METHOD_LABELS
from dnr.markdown import markdown_table

PHASES = [
    "data",
    "attack forward",
    "attack backward",
    "train forward",
    "train backward",
    "optimizer step",
    "masking hook (after_step)",
    "other",
    "total",
]


def pct(v: float | None) -> str:
    """A fraction as a percentage, ``-`` when there is none."""
    return "-" if v is None else f"{100 * v:.1f} %"


def times(v: float | None) -> str:
    """A ratio, ``-`` when there is none."""
    return "-" if v is None else f"{v:.2f}"


def ms_share(phases: dict[str, float], phase: str) -> str:
    """A phase's milliseconds and its share of the step."""
    value = phases.get(phase, 0.0)
    return f"{1e3 * value:.1f} ({100 * value / phases['total']:.0f} %)"


def label(method: str) -> str:
    """A method's name in the tables."""
    return METHOD_LABELS.get(method, method)


def header(r: dict[str, Any]) -> list[str]:
    """Title, machine, data, attack, how per-image cost is measured, options, notes."""
    s = r["settings"]
    lines = [
        "# Training throughput: our DNR adversarial-training pipeline",
        "",
        *machine_lines(r),
        f"- data: {r['images']:,} {r['data']} images, augmented and shuffled by our "
        "device-resident `BatchLoader`; step: `dnr.training.train_step` (attack, hybrid loss "
        "beta 0.5, SGD, the method's after-step hook) plus the loop's on-device metric sums",
        f"- attack eps 8/255; PGD: {s['steps']} steps of 2/255, random start; FGSM-RS: one "
        f"1.25 eps step from a random start; free: {s['replays']} replays per batch "
        f"(optimizer steps), epochs divided by {s['replays']}",
        f"- per-image cost = (t({s['long']} batches) - t({s['short']} batches)) / "
        f"({s['long'] - s['short']} x batch), each slice from a fresh epoch, after "
        f"{s['warmup']} warm-up steps; median of {s['repeats']} interleaved repeats; "
        f"± = half the range of the repeats",
        f"- options: bf16 {s['bf16']}, channels_last {s['channels_last']}, compile {s['compile']}",
    ]
    return lines + [f"- {n}" for n in r["notes"]]


def throughput_section(rows: list[dict[str, Any]]) -> list[str]:
    """images/s of every case of ours, with its ratios to dense AT and to PGD."""
    return [
        "",
        "## Throughput",
        "",
        "images/s = images of training data per second (a `free` batch is replayed, i.e. "
        "trained on, `replays` times); `× dense` = cost per image relative to dense AT in the "
        "same mode; `recipe epoch × PGD` = cost of one epoch of the PGD recipe relative to "
        "PGD with the same method (for `free`, whose run has epochs/replays passes: per-image "
        "cost / replays).",
        "",
        markdown_table(
            ["model", "batch", "method", "mode", "images/s", "±", "× dense", "recipe epoch × PGD"],
            [
                [
                    row["model"],
                    row["batch_size"],
                    label(row["method"]),
                    row["mode"],
                    f"{row['images_per_sec']:.1f}",
                    pct(row["spread"]),
                    times(row["cost_vs_dense_same_mode"]),
                    times(row["recipe_epoch_cost_vs_pgd"]),
                ]
                for row in rows
            ],
        ),
    ]


def reference_section(refs: list[dict[str, Any]], workers: int) -> list[str]:
    """Our speed-up over the reference-style loop (nothing when it was not measured)."""
    if not refs:
        return []
    return [
        "",
        "## Ours vs. the reference-style loop (`reference_loop.py`)",
        "",
        "Same model and initial weights, data, batch, attack (PGD, eps 8/255, step 2/255, "
        "random start), hybrid loss and SGD. Reference: DataLoader with per-image PIL "
        f"transforms ({workers} workers, started each epoch), `loss.backward()` in "
        "every attack step (weight gradients too) with eval/train toggles, fp32, masks "
        "multiplied into the weights after every step from a Python dict, `.item()` twice "
        "per step. Ours: as in the table above.",
        "",
        markdown_table(
            ["model", "batch", "method", "reference images/s", "±", "ours images/s", "speed-up"],
            [
                [
                    f["model"],
                    f["batch_size"],
                    label(f["method"]),
                    f"{f['reference_images_per_sec']:.1f}",
                    pct(f["reference_spread"]),
                    "-" if f["ours_images_per_sec"] is None else f"{f['ours_images_per_sec']:.1f}",
                    "-" if f["speedup"] is None else f"{f['speedup']:.2f}×",
                ]
                for f in refs
            ],
        ),
    ]


FLOPS_INTRO = (
    "FLOPs per image = 2 × MACs of one forward (Conv2d + Linear, `dnr.costs.model_costs`; "
    "dense counts, since masked weights are still multiplied) × forward-pass equivalents. "
    "Pass-counting rules: *conventional*: every backward = 2 forwards (input + weight "
    "gradients), so PGD-k hybrid = 3k + 6 (k attack forward+backward, then clean and "
    "adversarial forwards and one backward through both); *needed*: a backward to the "
    "input only = 1 forward (our attack skips weight gradients), so PGD-k hybrid = "
    "2k + 6. Peak: best square `torch.mm` of this process ("
)
FLOPS_HEADER = [
    "model",
    "batch",
    "MACs / image",
    "passes (conv. / needed)",
    "ours GFLOP/s (conv. / needed)",
    "fraction of fp32 matmul (conv. / needed)",
    "reference GFLOP/s (conv.)",
    "what limits it",
]


def flops_cells(f: dict[str, Any]) -> list[Any]:
    """One row of the FLOP/s table."""
    ref = f["reference_achieved_flops_conventional"]
    return [
        f["model"],
        f["batch_size"],
        f"{f['macs_per_image'] / 1e6:,.1f} M",
        f"{f['forward_passes']['conventional']:g} / {f['forward_passes']['needed']:g}",
        f"{f['achieved_flops']['conventional'] / 1e9:,.1f} / "
        f"{f['achieved_flops']['needed'] / 1e9:,.1f}",
        f"{pct(f['fraction_of_matmul_fp32']['conventional'])} / "
        f"{pct(f['fraction_of_matmul_fp32']['needed'])}",
        "-" if ref is None else f"{ref / 1e9:,.1f}",
        f["note"],
    ]


def flops_section(flops: list[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> list[str]:
    """Achieved FLOP/s by both counting rules, against the same process's matmul peak."""
    peak_text = ", ".join(
        f"{k} {v['flops'] / 1e9:,.1f} GFLOP/s at n={v.get('n')}" for k, v in peaks.items()
    )
    lines = [
        "",
        "## Achieved FLOP/s",
        "",
        FLOPS_INTRO + peak_text + "). The reference does the conventional count's work for real.",
        "",
        markdown_table(FLOPS_HEADER, [flops_cells(f) for f in flops]),
    ]
    if any(f["precision"] != "fp32" for f in flops):
        lines += [
            "",
            "Against the matmul peak of the precision the convolutions run in: "
            + "; ".join(
                f"{f['model']} batch {f['batch_size']} ({f['precision']}): "
                f"{pct((f['fraction_of_matmul_same_precision'] or {}).get('conventional'))}"
                for f in flops
            ),
        ]
    return lines


def profile_tables(p: dict[str, Any]) -> list[str]:
    """One model's profile: ms per phase, operator groups, the top operators of the first."""
    keys = list(p["phases"])
    groups = dict.fromkeys(g for k in keys for g in p["ops"][k]["groups"])
    return [
        "",
        f"### {p['model']}, batch {p['batch_size']}",
        "",
        markdown_table(
            ["phase", *keys],
            [[ph, *(ms_share(p["phases"][k], ph) for k in keys)] for ph in PHASES],
        ),
        "",
        "Operator self-time by group (`torch.profiler`, one step):",
        "",
        markdown_table(
            ["group", *keys],
            [[g, *(pct(p["ops"][k]["groups"].get(g)) for k in keys)] for g in groups],
        ),
        "",
        f"Top operators of `{keys[0]}`:",
        "",
        markdown_table(
            ["operator", "ms", "share", "calls"],
            [
                [o["op"], f"{o['ms']:.1f}", pct(o["share"]), o["calls"]]
                for o in p["ops"][keys[0]]["top"]
            ],
        ),
    ]


def profile_section(profiles: list[dict[str, Any]]) -> list[str]:
    """Where a step's time goes, per profiled model (nothing when not profiled)."""
    if not profiles:
        return []
    lines = [
        "",
        "## Where a step's time goes",
        "",
        "Milliseconds per training step (one batch), by phase, timed with hooks that "
        "synchronise at every boundary: forwards of the model (attack: model frozen or in "
        "eval mode), the backward/`autograd.grad` that follows each, `optimizer.step`, the "
        "masking hook, the data (`next` of the loader). *other*: the attack's sign/clamp "
        "updates, losses, `zero_grad`, metric sums, host syncs and Python.",
    ]
    for p in profiles:
        lines += profile_tables(p)
    return lines


def render_markdown(r: dict[str, Any]) -> str:
    """The whole report from a results dict (as written to ``train_throughput_*.json``)."""
    lines = header(r)
    lines += throughput_section(r["results"])
    lines += reference_section(r["reference"], r["settings"]["workers"])
    lines += flops_section(r["flops"], r["matmul_peak"])
    lines += profile_section(r["profiles"])
    return "\n".join(lines)
