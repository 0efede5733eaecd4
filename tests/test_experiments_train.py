"""The training experiments (itnet_ext.experiments): generated tasks checked against
independent oracles, baselines' contracts, the training loop's determinism and a short run
whose loss falls. Speed is measured by the command itself, not here."""
import json
import math

import pytest
import torch

from itnet_ext.experiments import baselines as B
from itnet_ext.experiments import tasks as T


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------
def test_selective_copying_targets_are_the_data_tokens_in_order():
    d = T.selective_copying(50, seq_len=20, num_tokens=5, vocab=7, seed=3)
    assert d.inputs.shape == d.targets.shape == d.mask.shape == (50, 25)
    assert d.vocab_size == 8
    for row, tgt, m in zip(d.inputs.tolist(), d.targets.tolist(), d.mask.tolist()):
        data = [t for t in row[:20] if t != 0]                 # oracle: scan the row
        assert len(data) == 5 and all(1 <= t <= 6 for t in data)
        assert row[20:] == [7] * 5                               # the markers
        assert [t for t, k in zip(tgt, m) if k] == data
        assert m == [False] * 20 + [True] * 5
        assert all(t == T.IGNORE for t, k in zip(tgt, m) if not k)


def test_associative_recall_target_is_the_value_after_the_query_key():
    d = T.associative_recall(60, num_pairs=6, vocab=30, seed=[1, 2])
    assert d.inputs.shape == (60, 13)
    for row, tgt, m in zip(d.inputs.tolist(), d.targets.tolist(), d.mask.tolist()):
        keys, values, q = row[0:-1:2], row[1:-1:2], row[-1]
        assert len(set(keys)) == 6 and all(1 <= k < 15 for k in keys)
        assert all(15 <= v < 30 for v in values)
        assert sum(m) == 1 and m[-1]
        assert tgt[-1] == values[keys.index(q)]


def test_generated_tasks_are_seeded():
    a = T.associative_recall(8, 4, 20, seed=T.split_seed(5, "train"))
    b = T.associative_recall(8, 4, 20, seed=T.split_seed(5, "train"))
    c = T.associative_recall(8, 4, 20, seed=T.split_seed(5, "test"))
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    p1, l1 = T.point_shapes(3, 16, seed=0)
    p2, l2 = T.point_shapes(3, 16, seed=0)
    p3, _ = T.point_shapes(3, 16, seed=1)
    assert torch.equal(p1, p2) and torch.equal(l1, l2) and not torch.equal(p1, p3)


def test_point_shapes_normalised_and_balanced():
    pts, labels = T.point_shapes(4, 64, seed=0)
    assert pts.shape == (4 * len(T.SHAPES), 64, 3) and pts.dtype == torch.float32
    assert torch.bincount(labels, minlength=len(T.SHAPES)).tolist() == [4] * len(T.SHAPES)
    assert pts.mean(1).abs().max() < 1e-5                       # centred
    torch.testing.assert_close(pts.norm(dim=-1).amax(1), torch.ones(len(pts)))


def test_point_shapes_lie_on_their_surfaces():
    """Without stretch and noise, a sphere's points fit one sphere exactly (least squares:
    |x|^2 = 2 c.x + (r^2 - |c|^2) is linear in c; the centring moved the centre off 0 by the
    sample mean); a cube's radii about its centre span its inscribed to circumscribed ratio."""
    pts, labels = T.point_shapes(3, 400, seed=2, stretch=0.0, noise=0.0)
    names = list(T.SHAPES)
    for cloud in pts[labels == names.index("sphere")].double():
        A = torch.cat([2 * cloud, torch.ones(len(cloud), 1, dtype=cloud.dtype)], 1)
        sol = torch.linalg.lstsq(A, cloud.square().sum(1, keepdim=True)).solution
        c, k = sol[:3, 0], sol[3, 0]
        radius = (cloud - c).norm(dim=-1)
        torch.testing.assert_close(radius, (k + c.square().sum()).sqrt().expand(len(cloud)),
                                   atol=1e-5, rtol=0)
    for cloud in pts[labels == names.index("cube")].double():
        r = (cloud - (cloud.amax(0) + cloud.amin(0)) / 2).norm(dim=-1)   # not quite the
        ratio = r.min() / r.max()                                        # centre: rotated
        assert 0.5 < ratio < 0.7, ratio                                  # 1/sqrt(3) = 0.577


def test_digits_split_is_stratified():
    pytest.importorskip("sklearn")
    s = T.digits(seed=0)
    assert s.x_train.shape[1:] == (1, 8, 8) and 0 <= s.x_train.min() and s.x_train.max() <= 1
    assert len(s.x_train) + len(s.x_test) == 1797
    frac = torch.bincount(s.y_test, minlength=10).double() / torch.bincount(
        torch.cat([s.y_train, s.y_test]), minlength=10).double()
    assert (frac - 0.2).abs().max() < 0.01


@pytest.mark.parametrize("call, match", [
    (lambda: T.selective_copying(4, 3, 5, 6, 0), "num_tokens"),
    (lambda: T.selective_copying(4, 8, 2, 1, 0), "vocab"),
    (lambda: T.associative_recall(4, 10, 12, 0), "distinct keys"),
    (lambda: T.point_shapes(0, 8, 0), "n_per_class"),
    (lambda: T.stratified_split([0, 1], 1.5, 0), "test_fraction"),
])
def test_task_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------
def test_match_width_picks_the_nearest_count_and_refuses_unfair_sizes():
    build = lambda w: torch.nn.Linear(w, w)                    # w^2 + w parameters
    assert B.match_width(build, 110, range(1, 20)) == (10, 110)
    assert B.match_width(build, 104, range(1, 20))[0] == 10      # 110 vs 90
    with pytest.raises(ValueError, match="widen the range"):
        B.match_width(build, 10_000, range(1, 20))


def test_causal_transformer_is_causal():
    torch.manual_seed(0)
    m = B.CausalTransformer(11, 16, depth=2, heads=2, max_len=12).eval()
    x = torch.randint(0, 11, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 11
    a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_point_models_are_order_invariant():
    torch.manual_seed(0)
    pts = torch.randn(3, 20, 3)
    perm = torch.randperm(20)
    for m in (B.PointNet(5, 8), B.PointTransformer(5, 16, depth=1, heads=2, hidden=8)):
        m.eval()
        torch.testing.assert_close(m(pts), m(pts[:, perm]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make, x, shape", [
    (lambda: B.ViT(8, 2, 1, 10, 16, 1, heads=2), torch.randn(2, 1, 8, 8), (2, 10)),
    (lambda: B.CNN(1, 10, 4), torch.randn(2, 1, 8, 8), (2, 10)),
    (lambda: B.GRUModel(9, 12), torch.randint(0, 9, (2, 7)), (2, 7, 9)),
    (lambda: B.MambaModel(9, 12, depth=1), torch.randint(0, 9, (2, 7)), (2, 7, 9)),
])
def test_baseline_shapes_and_gradients(make, x, shape):
    torch.manual_seed(0)
    m = make()
    out = m(x)
    assert out.shape == shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in m.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------
from itnet_ext.experiments import train as TR  # noqa: E402


def test_warmup_cosine():
    f = TR.warmup_cosine(10, 2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0)


def test_evaluate_counts_only_masked_positions():
    """An oracle right at every target and wrong everywhere else scores 1; spoiling one
    target costs exactly one of the 60 targets."""
    d = T.selective_copying(20, 8, 3, 5, seed=0)

    class Oracle(torch.nn.Module):
        def __init__(self, spoil=False):
            super().__init__()
            self.spoil = spoil

        def forward(self, tokens):
            idx = [int((d.inputs == t).all(1).nonzero()[0, 0]) for t in tokens]
            tgt = torch.where(d.mask[idx], d.targets[idx], 0)   # 0 is never a target
            if self.spoil and 0 in idx:
                tgt[idx.index(0), -1] = 0
            return torch.nn.functional.one_hot(tgt, d.vocab_size).float()
    task = TR.Task("t", "sequence", d[:3], d[:3], {}, {}, 1, 4, 1e-3, 1)
    assert TR.evaluate(Oracle(), task, batch_size=7) == 1.0
    assert TR.evaluate(Oracle(spoil=True), task, batch_size=7) == pytest.approx(59 / 60)


def test_short_training_run_learns_and_is_deterministic():
    """Digits, quick ITNet: the mean training loss of the last evaluation window is below
    the first's, and the same seed gives the same curve."""
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    task = TR.build_task("digits", seed=0, quick=True)
    task.steps, task.eval_every, task.lr = 60, 20, 1e-2
    runs = []
    for _ in range(2):
        model = task.models["itnet"]()
        runs.append(TR.fit(model, task, seed=0, progress=False))
    losses = [c[1] for c in runs[0]["curve"]]
    assert losses[-1] < 0.9 * losses[0], losses
    assert runs[0]["curve"] == runs[1]["curve"]


def test_equal_parameter_counts_per_task():
    pytest.importorskip("sklearn")
    for name in TR.TASKS:
        task = TR.build_task(name, seed=0, quick=True)
        counts = {m: B.count_parameters(b()) for m, b in task.models.items()}
        assert list(counts)[0] == "itnet"
        for m, n in counts.items():
            assert abs(n - counts["itnet"]) <= 0.15 * counts["itnet"], (name, counts)


def test_command_writes_json_and_png(tmp_path, capsys):
    for mod in ("sklearn", "tqdm", "matplotlib"):
        pytest.importorskip(mod)
    rec = TR.main(["--quick", "--tasks", "digits,associative_recall", "--steps", "3",
                   "--out", str(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "png"]
    on_disk = json.loads((tmp_path / files[0]).read_text())
    assert set(on_disk["tasks"]) == {"digits", "associative_recall"}
    for t in on_disk["tasks"].values():
        for m in t["models"].values():
            assert 0.0 <= m["final_test_acc"] <= 1.0 and m["curve"][-1][0] == 3
    assert rec["tasks"].keys() == on_disk["tasks"].keys()
    assert "| digits | itnet |" in capsys.readouterr().out


def test_command_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        TR.main(["--tasks", "imagenet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        TR.main(["--steps", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown task"):
        TR.build_task("nope")
