"""The training-throughput benchmark's parts (``train_throughput.py`` is their command line).

``cases`` builds what is timed (our pipeline, the reference loop); ``passes`` counts a
step's forward passes; ``peaks`` measures the matmul FLOP/s a figure is compared with;
``profile`` says where a step's time goes; ``measure`` times the cases and makes the rows;
``render`` writes the Markdown report.
"""
