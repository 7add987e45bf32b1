"""What the benchmark scripts in ``benchmarks/`` share; not a benchmark itself.

Each script is a thin command line over these modules: ``machine`` (what a figure was
measured on, honest clocks), ``images`` (the images the speed benchmarks train on),
``results`` (where results go and how), ``reference_loop`` (the released code's way of
training), and one subpackage per larger benchmark (``throughput``, ``controls``).
Scripts import it as ``benchlib`` (``python benchmarks/x.py`` puts ``benchmarks/`` first
on ``sys.path``) and ``dnr`` as the installed package.
"""
