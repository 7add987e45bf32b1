"""DNR against its controls (``dnr_vs_controls.py`` is their command line).

``plan`` lists the runs (one shared recipe, every variant an override list); ``splits``
makes and packs the data; ``runs`` trains and scores one run; ``report`` merges results
files into the Markdown report; ``plot`` draws the figures from the same results.
"""
