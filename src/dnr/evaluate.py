"""Temporary re-export for ``dnr.trainer``'s validation; everything else moved to
:mod:`dnr.robustness`. Deleted once the trainer imports from there."""

from dnr.robustness import clean_accuracy, pgd_accuracy  # noqa: F401
