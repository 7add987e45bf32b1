"""The fixed choices of a comparison that its plan, statistics and documents all rely on."""

from __future__ import annotations

__all__ = [
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "IMAGES_SEEN_NOTE",
    "NOISE_SEED_OFFSET",
]

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"

#: How ``images_seen`` is counted (also written into comparison.json / .md).
IMAGES_SEEN_NOTE = (
    "training examples per epoch (metrics.jsonl: train_images), summed over every epoch "
    "of every stage"
)

#: ``--noise-floor``: the reference trains again with these seeds + this offset.
NOISE_SEED_OFFSET = 1000
