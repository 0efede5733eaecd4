"""Benchmark recipes: one command per benchmark of the paper, for a GPU cluster under
``torchrun`` (or one process without it), on the data loaders of :mod:`itnet_ext.data`.

- ``python -m itnet_ext.experiments.recipes.imagenet --data-root /data/imagenet``:
  ImageNet-1k (ImageFolder ``train/`` and ``val/``), PatchEncoder + dense blocks.
- ``python -m itnet_ext.experiments.recipes.glue --data-root /data/glue --task sst2``:
  a GLUE task, TokenEncoder + dense blocks over ``[CLS] a [SEP] b [SEP]``.
- ``python -m itnet_ext.experiments.recipes.modelnet --data-root /data/modelnet40_ply_hdf5_2048``:
  ModelNet40 (HDF5 or OFF meshes), PointEncoder + "neighbors" blocks.
- ``python -m itnet_ext.experiments.recipes.vqa --data-root /data/vqa``: VQAv2,
  VisionLanguageEncoder + dense blocks, soft-score BCE.

Each module's docstring gives the multi-node torchrun line; :mod:`.common` holds the shared
training loop. Every ``main(argv)`` returns a dict with the final training ``loss``, the
``steps``, the validation ``metric`` and the ``checkpoint`` path.
"""
