"""A GLUE task with an ITNet over tokens (TokenEncoder + dense blocks, mean-pooled head):
cross-entropy for the classification tasks, mean squared error for STS-B.

Data (``--data-root``): the GLUE root of the download script (``<root>/SST-2/train.tsv``
...) or one task's directory; see :mod:`itnet_ext.data.glue` for the per-task columns. The
vocabulary is built from the task's ``train.tsv`` (word level, byte fallback; no download)
and saved in the checkpoint. Validation: ``dev.tsv`` (MNLI: ``dev_matched.tsv``, or
``--eval-split dev_mismatched``); the metric is accuracy (STS-B: minus the MSE).

    python -m itnet_ext.experiments.recipes.glue --data-root /data/glue --task sst2

A GPU cluster, 2 nodes x 8 GPUs::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint $MASTER_ADDR:29500 --rdzv_id glue-mnli \\
        -m itnet_ext.experiments.recipes.glue --data-root /data/glue --task mnli \\
        --epochs 10 --batch-size 32 --embed-dim 512 --depth 8 --num-heads 8 --max-len 128 \\
        --lr 5e-4 --warmup-steps 2000 --out /checkpoints/itnet-glue
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch.nn import functional as F

from ...data import GlueDataset, glue_collate, glue_task
from ...models import ITNet, OperatorConfig, TokenEncoder
from . import common as C

__all__ = ["build_parser", "build_model", "main"]


def build_parser():
    p = C.base_parser("glue", __doc__, lr=5e-4, batch_size=32, warmup_steps=500, depth=6,
                      embed_dim=256, num_heads=4)
    p.add_argument("--task", default="sst2", help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=30000, help="most frequent training words kept")
    p.add_argument("--eval-split", default=None, help="default: dev (MNLI: dev_matched)")
    return p


def build_model(args, vocab_size: int, num_outputs: int) -> ITNet:
    cfg = OperatorConfig(args.embed_dim, num_heads=args.num_heads, kernel_hidden=args.kernel_hidden)
    return ITNet(TokenEncoder(vocab_size, args.embed_dim, padding_idx=0), cfg, args.depth,
                 "dense", num_outputs=num_outputs)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    glue_task(args.task)                # an unknown task fails before any process group
    return C.launch(_run, args)


def _run(args, env: C.DistEnv) -> dict:
    task = glue_task(args.task)
    train_set = GlueDataset(args.data_root, task, "train", max_len=args.max_len,
                            vocab_size=args.vocab_size)
    tok = train_set.tokenizer
    eval_split = args.eval_split or ("dev_matched" if task.name == "mnli" else "dev")
    val_set = GlueDataset(args.data_root, task, eval_split, tokenizer=tok, max_len=args.max_len)
    C.seed_everything(args.seed)
    model = C.wrap_ddp(build_model(args, len(tok), task.num_outputs), env)
    C.seed_everything(args.seed, env.rank)
    loader, sampler = C.make_loader(train_set, args.batch_size, env, train=True, seed=args.seed,
                                    num_workers=args.num_workers, collate_fn=glue_collate)

    def step(m, batch):
        ids, _, y = batch
        out = m(ids).float()
        return F.mse_loss(out[:, 0], y) if task.is_regression else F.cross_entropy(out, y)

    def metric(m, batch):
        ids, _, y = batch
        out = m(ids).float()
        if task.is_regression:
            return -(out[:, 0] - y).square().sum(), y.numel()
        return (out.argmax(-1) == y).sum(), y.numel()

    loss, steps, ckpt = C.train(model, loader, sampler, args, env, step_fn=step,
                                name=f"glue_{task.name}",
                                extra={"task": task.name, "vocab": tok.words})
    vloader, _ = C.make_loader(val_set, args.batch_size, env, train=False,
                               num_workers=args.num_workers, collate_fn=glue_collate)
    score = C.evaluate(model, vloader, env, metric, args.precision, args.eval_batches)
    C.log(env, f"[glue {task.name}] {eval_split} {'-mse' if task.is_regression else 'accuracy'} "
               f"{score:.4f}")
    C.log(env, f"[glue {task.name}] final loss {loss:.4f} after {steps} steps; checkpoint {ckpt}")
    return {"loss": loss, "steps": steps, "metric": score, "checkpoint": ckpt}


if __name__ == "__main__":
    main()
