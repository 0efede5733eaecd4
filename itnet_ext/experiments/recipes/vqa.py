"""VQAv2 with an ITNet over image patches and question tokens in one sequence
(VisionLanguageEncoder + dense blocks, mean-pooled head over the top-K answers), trained
with binary cross-entropy on the soft scores ``min(1, count / 3)``.

Data (``--data-root``; the file names of visualqa.org and COCO 2014)::

    <root>/v2_OpenEnded_mscoco_train2014_questions.json
    <root>/v2_mscoco_train2014_annotations.json
    <root>/train2014/COCO_train2014_000000000009.jpg ...
    <root>/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json,
    <root>/val2014/COCO_val2014_*.jpg                     (optional: validation)

The answer vocabulary (``--top-k``) and the question vocabulary come from the training
split and are saved in the checkpoint; the metric is the VQA score of the arg-max answer.

    python -m itnet_ext.experiments.recipes.vqa --data-root /data/vqa

A GPU cluster, 4 nodes x 8 GPUs::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint $MASTER_ADDR:29500 --rdzv_id vqa \\
        -m itnet_ext.experiments.recipes.vqa --data-root /data/vqa \\
        --epochs 20 --batch-size 64 --image-size 224 --patch-size 16 --embed-dim 512 \\
        --depth 12 --num-heads 8 --top-k 3129 --lr 1e-3 --out /checkpoints/itnet-vqa
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch.nn import functional as F

from ...data import TrainTransform, VQADataset, vqa_collate
from ...models import ITNet, OperatorConfig, VisionLanguageEncoder
from . import common as C

__all__ = ["build_parser", "build_model", "split_files", "main"]


def build_parser():
    p = C.base_parser("vqa", __doc__, batch_size=64, embed_dim=384, depth=8, num_heads=6)
    p.add_argument("--train-split", default="train2014")
    p.add_argument("--val-split", default="val2014", help="'' to skip validation")
    p.add_argument("--top-k", type=int, default=3129, help="answer vocabulary size")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=14, help="question tokens kept")
    return p


def split_files(root: str, split: str):
    """(questions file, annotations file, image folder) of ``split`` (e.g. "train2014")."""
    return (os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json"),
            os.path.join(root, f"v2_mscoco_{split}_annotations.json"),
            os.path.join(root, split))


def build_model(args, vocab_size: int, num_answers: int) -> ITNet:
    cfg = OperatorConfig(args.embed_dim, num_heads=args.num_heads, kernel_hidden=args.kernel_hidden)
    enc = VisionLanguageEncoder(args.image_size, args.patch_size, 3, vocab_size, args.embed_dim,
                                padding_idx=0)
    return ITNet(enc, cfg, args.depth, "dense", num_outputs=num_answers)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    return C.launch(_run, args)


def _run(args, env: C.DistEnv) -> dict:
    q, a, img = split_files(args.data_root, args.train_split)
    train_set = VQADataset(q, a, img, args.train_split, top_k=args.top_k, max_len=args.max_len,
                           transform=TrainTransform(args.image_size, scale=(0.5, 1.0)),
                           drop_unanswerable=True)
    val_set = None
    vq, va, vimg = split_files(args.data_root, args.val_split) if args.val_split else (None,) * 3
    if vq and os.path.isfile(vq):
        val_set = VQADataset(vq, va, vimg, args.val_split, answers=train_set.answers,
                             tokenizer=train_set.tokenizer, max_len=args.max_len,
                             image_size=args.image_size)
    C.seed_everything(args.seed)
    model = C.wrap_ddp(build_model(args, len(train_set.tokenizer), len(train_set.answers)), env)
    C.seed_everything(args.seed, env.rank)
    loader, sampler = C.make_loader(train_set, args.batch_size, env, train=True, seed=args.seed,
                                    num_workers=args.num_workers, collate_fn=vqa_collate)

    def step(m, batch):
        x, ids, target = batch
        out = m(x, ids).float()         # BCE summed over answers, as in the VQA literature
        return F.binary_cross_entropy_with_logits(out, target) * target.shape[1]

    def metric(m, batch):
        x, ids, target = batch
        best = m(x, ids).argmax(-1, keepdim=True)
        return target.gather(1, best).sum(), target.shape[0]

    loss, steps, ckpt = C.train(model, loader, sampler, args, env, step_fn=step, name="vqa",
                                extra={"answers": train_set.answers,
                                       "vocab": train_set.tokenizer.words})
    score = None
    if val_set is not None:
        vloader, _ = C.make_loader(val_set, args.batch_size, env, train=False,
                                   num_workers=args.num_workers, collate_fn=vqa_collate)
        score = C.evaluate(model, vloader, env, metric, args.precision, args.eval_batches)
        C.log(env, f"[vqa] {args.val_split} VQA score {score:.4f}")
    C.log(env, f"[vqa] final loss {loss:.4f} after {steps} steps; checkpoint {ckpt}")
    return {"loss": loss, "steps": steps, "metric": score, "checkpoint": ckpt}


if __name__ == "__main__":
    main()
