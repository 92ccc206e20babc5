"""The JUDO ablation's parts; ``benchmarks/judo_ablation.py`` is the command line."""
