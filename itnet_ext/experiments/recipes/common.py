"""What every benchmark recipe shares: torchrun / single-process setup, data loading with a
:class:`~torch.utils.data.DistributedSampler`, DDP, AdamW with warmup-cosine, bf16 autocast
on CUDA, a log line every ``--log-every`` steps, rank-0 checkpoints and seeding.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) each process joins the
process group (NCCL on CUDA, gloo on CPU) and drives ``cuda:LOCAL_RANK``; without those
variables the recipe runs as one plain process.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch import distributed as dist

__all__ = ["DistEnv", "base_parser", "init_distributed", "launch", "cleanup", "seed_everything",
           "make_loader", "wrap_ddp", "unwrap", "warmup_cosine", "make_optimizer", "autocast",
           "save_checkpoint", "train", "evaluate", "log", "to_device"]


@dataclass
class DistEnv:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` on its node, device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def base_parser(name: str, doc: Optional[str] = None, **defaults) -> argparse.ArgumentParser:
    """The options every recipe takes; ``defaults`` overrides their default values."""
    p = argparse.ArgumentParser(prog=f"python -m itnet_ext.experiments.recipes.{name}",
                                description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True,
                   help="the benchmark's directory (layout: see the description)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--embed-dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--num-heads", type=int, default=6)
    p.add_argument("--kernel-hidden", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--clip-grad", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--max-steps", type=int, default=0,
                   help="run exactly this many optimizer steps, however many epochs that "
                   "takes (0: --epochs epochs)")
    p.add_argument("--eval-batches", type=int, default=0, help="0: the whole validation set")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16 autocast on CUDA (CPU always runs fp32)")
    p.add_argument("--num-workers", type=int, default=8, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default="checkpoints", help="checkpoint directory")
    p.set_defaults(**defaults)
    return p


def init_distributed(device: Optional[str] = None) -> DistEnv:
    """Join torchrun's process group when its environment variables are set, else one process.
    ``device``: "cpu" or "cuda" (default: cuda when available); on CUDA each process takes
    ``cuda:LOCAL_RANK``; the backend is NCCL on CUDA, gloo on CPU."""
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
    if device is not None and not str(device).startswith(("cuda", "cpu")):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    env = DistEnv()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        env.rank, env.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        env.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    env.device = torch.device(f"cuda:{env.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(env.device)
    if env.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return env


def launch(run: Callable[[argparse.Namespace, DistEnv], dict], args: argparse.Namespace) -> dict:
    """Join the process group, ``run(args, env)``, leave the group. The model, its DDP reducer
    and the loaders live in ``run``'s frame, so they are gone before the group is destroyed:
    a gloo group torn down while DDP still held it aborted ~1 run in 5 at interpreter exit
    ("terminate called without an active exception", 2 CPU processes under torchrun)."""
    env = init_distributed(args.device)
    try:
        return run(args, env)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)       # the traceback would keep run's locals
        raise
    finally:
        gc.collect()
        cleanup()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch; ``rank`` offsets the seed (per-process augmentation;
    the model's initial weights are broadcast from rank 0 by DDP)."""
    s = int(seed) + 1000 * int(rank)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    torch.manual_seed(s)


def make_loader(dataset, batch_size: int, env: DistEnv, *, train: bool, seed: int = 0,
                num_workers: int = 0, collate_fn=None):
    """(loader, sampler): a DistributedSampler over ``env``'s processes (shuffled and
    drop-last for training), else a seeded shuffle (training) or the dataset order."""
    sampler = None
    if env.distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, env.world_size, env.rank,
                                                      shuffle=train, seed=seed, drop_last=train)
    elif train:
        sampler = torch.utils.data.RandomSampler(
            dataset, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=env.device.type == "cuda",
        drop_last=train and len(dataset) >= batch_size * env.world_size,
        persistent_workers=num_workers > 0)
    return loader, sampler


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """``model`` on ``env.device``, in DistributedDataParallel when there are several processes."""
    model = model.to(env.device)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier at step ``s``: linear warmup over ``warmup`` steps (at most steps - 1),
    then cosine decay to 0 at ``steps``."""
    warmup = max(0, min(warmup, steps - 1))

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
    return f


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, steps: int, warmup: int):
    """AdamW (no weight decay on 1-d parameters: biases, norms) and its warmup-cosine LambdaLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                              "weight_decay": weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))


def autocast(env: DistEnv, precision: str = "bf16"):
    """bf16 autocast on CUDA when ``precision == "bf16"``, else nothing."""
    if env.device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def log(env: DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


def to_device(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def save_checkpoint(path: str, model: nn.Module, env: DistEnv, **extra) -> str:
    """Rank 0 writes ``{"model": state_dict, **extra}`` to ``path`` (via a temporary file);
    the other processes wait for it."""
    if env.is_main:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        torch.save({"model": unwrap(model).state_dict(), **extra}, tmp)
        os.replace(tmp, path)
    if env.distributed:
        dist.barrier()
    return path


def _reduce(values: Sequence[float], env: DistEnv) -> Tensor:
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.distributed:
        dist.all_reduce(t)
    return t


def train(model: nn.Module, loader, sampler, args, env: DistEnv, *,
          step_fn: Callable[[nn.Module, object], Tensor], name: str,
          extra: Optional[dict] = None) -> Tuple[float, int, str]:
    """``args.epochs`` epochs (``args.max_steps`` steps instead when > 0) of AdamW on
    ``step_fn(model, batch) -> loss``; logs the mean loss over all processes every
    ``args.log_every`` steps and writes ``<args.out>/<name>_last.pt`` after each epoch and at
    the end. Returns (mean loss of the last logged window, steps taken, checkpoint path)."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"{name}: the training loader is empty (fewer examples than "
                         f"--batch-size {args.batch_size} x {env.world_size} processes?)")
    steps = args.max_steps if args.max_steps > 0 else per_epoch * max(1, args.epochs)
    opt, sched = make_optimizer(model, args.lr, args.weight_decay, steps, args.warmup_steps)
    ckpt = os.path.join(args.out, f"{name}_last.pt")
    step = epoch = n_window = 0
    window, last, t0 = 0.0, float("nan"), time.time()
    while step < steps:
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        model.train()
        for batch in loader:
            with autocast(env, args.precision):
                loss = step_fn(model, to_device(batch, env.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            sched.step()
            step += 1
            window, n_window = window + float(loss.detach()), n_window + 1
            if step % args.log_every == 0 or step == steps:
                s, n = _reduce([window, n_window], env).tolist()
                last, window, n_window = s / n, 0.0, 0
                log(env, f"[{name}] epoch {epoch} step {step}/{steps} loss {last:.4f} "
                         f"lr {sched.get_last_lr()[0]:.3e} {time.time() - t0:.1f}s")
            if step >= steps:
                break
        epoch += 1
        save_checkpoint(ckpt, model, env, step=step, epoch=epoch, args=vars(args),
                        optimizer=opt.state_dict(), **(extra or {}))
    return last, step, ckpt


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv, metric_fn, precision: str = "bf16",
             max_batches: int = 0) -> float:
    """``sum(score) / sum(count)`` of ``metric_fn(model, batch) -> (score sum, count)`` over
    the loader (its first ``max_batches`` batches when > 0) and all processes."""
    model.eval()
    total = [0.0, 0.0]
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        with autocast(env, precision):
            s, n = metric_fn(model, to_device(batch, env.device))
        total[0] += float(s)
        total[1] += float(n)
    s, n = _reduce(total, env).tolist()
    return s / max(n, 1.0)
