"""itnet_ext.distributed on the gloo backend: 2 and 4 CPU processes, every mode equal to
the single-process fused op to float64 rounding (outputs and gradients), and the bad
inputs that must fail the same way on every rank. The cases live in dist_cases.py; one
spawn per world size runs them all (process start-up dominates)."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import dist_cases  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _spawn(world, names, tmp_path):
    import torch.multiprocessing as mp
    init, result = str(tmp_path / "rdzv"), str(tmp_path / "result")
    mp.spawn(dist_cases.run, args=(world, init, names, result), nprocs=world, join=True)
    failures = [open(f"{result}.{r}").read() for r in range(world)]
    return [f for f in failures if f]


@pytest.mark.parametrize("world", [2, 4])
def test_every_mode_matches_the_single_process_op(world, tmp_path):
    failures = _spawn(world, list(dist_cases.CASES) + ["errors"], tmp_path)
    assert not failures, "\n".join(failures)


def test_shard_unshard_roundtrip():
    from itnet_ext import distributed as D
    x = torch.arange(2 * 24).view(2, 24)
    for layout in D.LAYOUTS:
        for world in (1, 2, 3, 4):
            parts = [D.shard(x, 1, r, world, layout) for r in range(world)]
            assert torch.equal(D.unshard(parts, 1, layout), x)
            idx = torch.cat([D.global_index(24 // world, r, world, layout, dtype=torch.float64,
                                            device="cpu") for r in range(world)], 1)
            assert torch.equal(D.unshard(idx.split(24 // world, 1), 1, layout).flatten(),
                               torch.arange(24, dtype=torch.float64))
    assert D.shard(x, 1, 0, 2, "zigzag").tolist()[0] == list(range(6)) + list(range(18, 24))
    with pytest.raises(ValueError, match="not divisible"):
        D.shard(x, 1, 0, 5, "zigzag")


def test_merge_of_empty_parts_is_zero_not_nan():
    from itnet_ext import distributed as D
    o = torch.zeros(1, 1, 2, 3)
    l = torch.full((1, 1, 2), float("-inf"))
    out, lse = D.merge_softmax(o, l, o, l)
    assert torch.equal(out, o) and torch.isneginf(lse).all()


def test_needs_an_initialized_group():
    from itnet_ext import distributed as D
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    x = torch.randn(1, 1, 4, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        D.integral_transform(x, x, x)
