"""ImageNet-1k classification with an ITNet over image patches (PatchEncoder + dense blocks).

Data (``--data-root``), the ImageFolder layout::

    <root>/train/<wnid>/*.JPEG          e.g. train/n01440764/n01440764_10026.JPEG
    <root>/val/<wnid>/*.JPEG            the validation images sorted into class folders
      or <root>/val/*.JPEG with --val-labels FILE ("<file name> <wnid or index>" per line)

Single process (or a quick CPU check)::

    python -m itnet_ext.experiments.recipes.imagenet --data-root /data/imagenet --max-steps 100

A GPU cluster, 4 nodes x 8 GPUs (run on every node; global batch 32 x 128 = 4096)::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint $MASTER_ADDR:29500 --rdzv_id imagenet \\
        -m itnet_ext.experiments.recipes.imagenet --data-root /data/imagenet \\
        --epochs 300 --batch-size 128 --embed-dim 384 --depth 12 --num-heads 6 \\
        --lr 4e-3 --warmup-steps 10000 --out /checkpoints/itnet-imagenet
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch.nn import functional as F

from ...data import EvalTransform, ImageFolder, ImageList, TrainTransform
from ...models import ITNet, OperatorConfig, PatchEncoder
from . import common as C

__all__ = ["build_parser", "build_model", "main"]


def build_parser():
    p = C.base_parser("imagenet", __doc__, lr=4e-3, batch_size=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--val-labels", default=None,
                   help="label file of a flat val/ folder (default: val/<class>/ folders)")
    return p


def build_model(args, num_classes: int) -> ITNet:
    cfg = OperatorConfig(args.embed_dim, num_heads=args.num_heads, kernel_hidden=args.kernel_hidden)
    enc = PatchEncoder(args.image_size, args.patch_size, 3, args.embed_dim)
    return ITNet(enc, cfg, args.depth, "dense", num_outputs=num_classes)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    return C.launch(_run, args)


def _run(args, env: C.DistEnv) -> dict:
    C.seed_everything(args.seed, env.rank)
    train_dir = os.path.join(args.data_root, "train")
    train_set = ImageFolder(train_dir, transform=TrainTransform(args.image_size))
    val_dir, val_tf = os.path.join(args.data_root, "val"), EvalTransform(args.image_size)
    val_set = None
    if args.val_labels:
        val_set = ImageList(val_dir, args.val_labels, train_set.class_to_idx, val_tf)
    elif os.path.isdir(val_dir):
        val_set = ImageFolder(val_dir, transform=val_tf)
        if val_set.classes != train_set.classes:
            raise ValueError(f"{val_dir}: its class folders differ from {train_dir}'s")
    C.seed_everything(args.seed)                  # the same initial weights everywhere
    model = C.wrap_ddp(build_model(args, len(train_set.classes)), env)
    C.seed_everything(args.seed, env.rank)
    loader, sampler = C.make_loader(train_set, args.batch_size, env, train=True,
                                    seed=args.seed, num_workers=args.num_workers)

    def step(m, batch):
        x, y = batch
        return F.cross_entropy(m(x).float(), y, label_smoothing=args.label_smoothing)

    loss, steps, ckpt = C.train(model, loader, sampler, args, env, step_fn=step,
                                name="imagenet", extra={"classes": train_set.classes})
    metric = None
    if val_set is not None:
        vloader, _ = C.make_loader(val_set, args.batch_size, env, train=False,
                                   num_workers=args.num_workers)
        metric = C.evaluate(model, vloader, env,
                            lambda m, b: ((m(b[0]).argmax(-1) == b[1]).sum(), b[1].numel()),
                            args.precision, args.eval_batches)
        C.log(env, f"[imagenet] val top-1 {metric:.4f}")
    C.log(env, f"[imagenet] final loss {loss:.4f} after {steps} steps; checkpoint {ckpt}")
    return {"loss": loss, "steps": steps, "metric": metric, "checkpoint": ckpt}


if __name__ == "__main__":
    main()
