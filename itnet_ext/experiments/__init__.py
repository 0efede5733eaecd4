"""Experiments: ITNet trained on data that ships or is generated here (no downloads), and
the recipes for the paper's benchmarks on a GPU cluster.

Commands:

- ``python -m itnet_ext.experiments.train [--tasks digits,shapes,selective_copying,associative_recall] [--steps N] [--seed S] [--out bench/results] [--quick]``:
  ITNet vs ViT / CNN (digits), PointNet / point transformer (3-D shapes), causal
  transformer / GRU / Mamba (selective copying, associative recall), equal parameter
  counts; writes ``train_<date>.json`` / ``.png`` and prints an accuracy table.
- ``python -m itnet_ext.experiments.recovery [--teachers ...] [--widths 4,16,32] [--quick]``:
  an ITNet layer with an MLP kernel (no converter) trained to imitate frozen random
  Conv1d / Conv2d / MHA / GRU / LSTM / Mamba teachers; held-out relative error vs steps
  and vs R beside a least-squares linear map; writes ``recovery_<date>.json`` / ``.png``.
- ``python -m itnet_ext.experiments.recipes.{imagenet,glue,modelnet,vqa} --data-root PATH``
  (under ``torchrun`` on a cluster, see each module): training on the benchmark formats
  read by :mod:`itnet_ext.data`.
"""
