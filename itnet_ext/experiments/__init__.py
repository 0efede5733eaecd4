"""Experiments: training ITNet against baselines of equal parameter count on data that
ships or is generated here (no downloads).

Commands:

- ``python -m itnet_ext.experiments.train [--tasks digits,shapes,selective_copying,associative_recall] [--steps N] [--seed S] [--out bench/results] [--quick]``:
  ITNet vs ViT / CNN (digits), PointNet / point transformer (3-D shapes), causal
  transformer / GRU / Mamba (selective copying, associative recall); writes
  ``train_<date>.json`` / ``.png`` and prints an accuracy table.
"""
