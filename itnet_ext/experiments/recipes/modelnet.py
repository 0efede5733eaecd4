"""ModelNet40 shape classification with an ITNet over point sets (PointEncoder + "neighbors"
blocks on a kNN graph of the coordinates), with random anisotropic scaling and translation.

Data (``--data-root``), either layout (``--format auto`` picks HDF5 when
``train_files.txt`` exists), see :mod:`itnet_ext.data.modelnet`::

    <root>/train_files.txt, test_files.txt, ply_data_*.h5     modelnet40_ply_hdf5_2048
    <root>/<class>/{train,test}/*.off                          ModelNet40 meshes (points are
                                                               sampled on the surface, anew
                                                               each epoch)

    python -m itnet_ext.experiments.recipes.modelnet --data-root /data/modelnet40_ply_hdf5_2048

A GPU cluster, 1 node x 8 GPUs::

    torchrun --nnodes 1 --nproc_per_node 8 --standalone \\
        -m itnet_ext.experiments.recipes.modelnet --data-root /data/modelnet40_ply_hdf5_2048 \\
        --epochs 300 --batch-size 32 --num-points 1024 --embed-dim 256 --depth 6 \\
        --num-heads 4 --neighbors-k 16 --lr 1e-3 --out /checkpoints/itnet-modelnet
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch.nn import functional as F

from ...data import ModelNetHDF5, ModelNetOFF
from ...models import ITNet, OperatorConfig, PointEncoder
from . import common as C

__all__ = ["build_parser", "build_model", "load_datasets", "main"]


def build_parser():
    p = C.base_parser("modelnet", __doc__, batch_size=32, embed_dim=256, depth=6, num_heads=4,
                      warmup_steps=500)
    p.add_argument("--format", choices=("auto", "hdf5", "off"), default="auto")
    p.add_argument("--num-points", type=int, default=1024)
    p.add_argument("--neighbors-k", type=int, default=16)
    p.add_argument("--point-hidden", type=int, default=64, help="PointEncoder MLP width")
    p.add_argument("--label-smoothing", type=float, default=0.2)
    return p


def load_datasets(args):
    """(train set, test set or None, number of classes)."""
    fmt = args.format
    if fmt == "auto":
        fmt = "hdf5" if os.path.isfile(os.path.join(args.data_root, "train_files.txt")) else "off"
    if fmt == "hdf5":
        train = ModelNetHDF5(args.data_root, "train", args.num_points, normalize=True)
        has_test = os.path.isfile(os.path.join(args.data_root, "test_files.txt"))
        test = ModelNetHDF5(args.data_root, "test", args.num_points, normalize=True) if has_test else None
        labels = [train.labels] + ([test.labels] if test is not None else [])
        n = len(train.classes) if train.classes else int(torch.cat(labels).max()) + 1
        return train, test, n
    train = ModelNetOFF(args.data_root, "train", args.num_points, seed=args.seed)
    try:
        test = ModelNetOFF(args.data_root, "test", args.num_points, seed=args.seed + 1)
    except ValueError:
        test = None
    return train, test, len(train.classes)


def build_model(args, num_classes: int) -> ITNet:
    cfg = OperatorConfig(args.embed_dim, num_heads=args.num_heads, kernel_hidden=args.kernel_hidden,
                         neighbors_k=args.neighbors_k)
    return ITNet(PointEncoder(args.embed_dim, hidden=args.point_hidden), cfg, args.depth,
                 "neighbors", num_outputs=num_classes)


def _augment(points):
    """Per shape: scale each axis by U(2/3, 3/2), shift by U(-0.2, 0.2)."""
    B = points.shape[0]
    scale = torch.empty(B, 1, 3, device=points.device).uniform_(2 / 3, 3 / 2)
    shift = torch.empty(B, 1, 3, device=points.device).uniform_(-0.2, 0.2)
    return points * scale + shift


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    return C.launch(_run, args)


def _run(args, env: C.DistEnv) -> dict:
    train_set, test_set, num_classes = load_datasets(args)
    C.seed_everything(args.seed)
    model = C.wrap_ddp(build_model(args, num_classes), env)
    C.seed_everything(args.seed, env.rank)
    loader, sampler = C.make_loader(train_set, args.batch_size, env, train=True,
                                    seed=args.seed, num_workers=args.num_workers)

    def step(m, batch):
        x, y = batch
        return F.cross_entropy(m(_augment(x)).float(), y, label_smoothing=args.label_smoothing)

    loss, steps, ckpt = C.train(model, loader, sampler, args, env, step_fn=step,
                                name="modelnet", extra={"num_classes": num_classes})
    metric = None
    if test_set is not None:
        tloader, _ = C.make_loader(test_set, args.batch_size, env, train=False,
                                   num_workers=args.num_workers)
        metric = C.evaluate(model, tloader, env,
                            lambda m, b: ((m(b[0]).argmax(-1) == b[1]).sum(), b[1].numel()),
                            args.precision, args.eval_batches)
        C.log(env, f"[modelnet] test overall accuracy {metric:.4f}")
    C.log(env, f"[modelnet] final loss {loss:.4f} after {steps} steps; checkpoint {ckpt}")
    return {"loss": loss, "steps": steps, "metric": metric, "checkpoint": ckpt}


if __name__ == "__main__":
    main()
