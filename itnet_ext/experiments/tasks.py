"""The training tasks: data that ships with a dependency or is generated here, so the
experiments need no download.

- :func:`digits`: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), a
  stratified train / test split. A small image task on a 2-D grid.
- :func:`point_shapes`: ModelNet-style 3-D point clouds sampled on the surfaces of simple
  solids (8 classes), randomly rotated, stretched and noised. A point-set task where the
  classifier must be invariant to order and pose.
- :func:`selective_copying` (Mamba, Gu & Dao 2023): copy the data tokens scattered among
  noise, in order, after the sequence. Needs content-dependent selection, which a fixed
  (time-invariant) recurrence or convolution cannot do.
- :func:`associative_recall` (H3 / Zoology): key-value pairs then a query key; answer its
  value. Needs look-up by content over the whole context.

The generated tasks draw one set per call; a train and a test set are two calls with
different seeds (:func:`split_seed`). Every seed is an int or a sequence of ints for
:func:`numpy.random.default_rng`, so the data are the same on every machine and torch
version.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "SequenceData", "IGNORE", "SHAPES", "split_seed", "stratified_split",
           "digits", "point_shapes", "selective_copying", "associative_recall"]

Seed = Union[int, Sequence[int]]

IGNORE = -100
"""Target of the positions without a loss (``F.cross_entropy``'s default ``ignore_index``)."""


class Split(NamedTuple):
    """A classification data set: inputs and int64 labels, train and test."""
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


class SequenceData(NamedTuple):
    """A sequence-to-sequence task for a causal model.

    ``inputs`` (n, T) int64 token ids in ``[0, vocab_size)``; ``targets`` (n, T) int64, the
    class the model's output at each position must predict, :data:`IGNORE` where there is no
    loss; ``mask`` (n, T) bool, True exactly where ``targets`` is a real target.
    ``vocab_size``: ids the inputs and targets use (the model's input and output size).
    """
    inputs: Tensor
    targets: Tensor
    mask: Tensor
    vocab_size: int


def split_seed(seed: int, split: str) -> Tuple[int, int]:
    """The seed of a generated task's ``"train"`` or ``"test"`` set for the run seed ``seed``:
    two independent streams, and no overlap between runs with different seeds."""
    return (int(seed), {"train": 0, "test": 1}[split])


def _check_positive(**kw):
    for name, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------
def stratified_split(labels, test_fraction: float, seed: Seed) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), sorted: per class, a seeded shuffle and the first
    ``round(test_fraction * count)`` to test, so both sets keep the class balance."""
    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits(seed: Seed = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's digits: images (N, 1, 8, 8) float32 in [0, 1] (pixel / 16), labels
    0..9; an 80 / 20 stratified split fixed by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits task needs scikit-learn (its load_digits data ships "
                          "with it): pip install scikit-learn") from e
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = stratified_split(d.target, test_fraction, seed)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    return Split(x[tr], y[tr], x[te], y[te])


# --------------------------------------------------------------------------------------
# point shapes
# --------------------------------------------------------------------------------------
def _faces(rng, n, p, corners):
    """Uniform points on the parallelograms ``(origin, edge_a, edge_b)`` of ``corners``
    chosen by area."""
    corners = np.asarray(corners, np.float64)                           # (F, 3, 3)
    area = np.linalg.norm(np.cross(corners[:, 1], corners[:, 2]), axis=-1)
    f = rng.choice(len(corners), size=(n, p), p=area / area.sum())
    a, b = rng.random((n, p, 1)), rng.random((n, p, 1))
    c = corners[f]
    return c[..., 0, :] + a * c[..., 1, :] + b * c[..., 2, :]


def _triangles(rng, n, p, tris):
    """Uniform points on the triangles ``(v0, v1, v2)`` of ``tris`` chosen by area."""
    tris = np.asarray(tris, np.float64)                                 # (F, 3, 3)
    e1, e2 = tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    area = np.linalg.norm(np.cross(e1, e2), axis=-1)
    f = rng.choice(len(tris), size=(n, p), p=area / area.sum())
    a, b = rng.random((n, p, 1)), rng.random((n, p, 1))
    flip = (a + b) > 1                                                  # fold into the triangle
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    return tris[f, 0] + a * e1[f] + b * e2[f]


def _sphere(rng, n, p):
    v = rng.standard_normal((n, p, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _cylinder(rng, n, p, r=0.5, h=2.0):
    side, cap = 2 * np.pi * r * h, np.pi * r * r
    part = rng.choice(3, size=(n, p), p=np.array([side, cap, cap]) / (side + 2 * cap))
    th = rng.random((n, p)) * 2 * np.pi
    rad = np.where(part == 0, r, r * np.sqrt(rng.random((n, p))))       # uniform on the caps
    z = np.where(part == 0, (rng.random((n, p)) - 0.5) * h, np.where(part == 1, h / 2, -h / 2))
    return np.stack([rad * np.cos(th), rad * np.sin(th), z], -1)


def _cone(rng, n, p, r=1.0, h=1.5):
    side, base = np.pi * r * np.hypot(r, h), np.pi * r * r
    on_side = rng.random((n, p)) < side / (side + base)
    t = np.sqrt(rng.random((n, p)))                   # distance from the apex (side) / centre
    th = rng.random((n, p)) * 2 * np.pi
    z = np.where(on_side, h * (1 - t), 0.0)
    return np.stack([t * r * np.cos(th), t * r * np.sin(th), z], -1)


def _torus(rng, n, p, R=1.0, r=0.3):
    u = rng.random((n, p)) * 2 * np.pi
    # the area element is proportional to R + r cos v: rejection-sample v until accepted
    v = np.empty((n, p))
    todo = np.ones((n, p), bool)
    while todo.any():
        cand = rng.random(int(todo.sum())) * 2 * np.pi
        ok = rng.random(cand.shape) * (R + r) <= R + r * np.cos(cand)
        idx = np.flatnonzero(todo)[ok]
        v.flat[idx] = cand[ok]
        todo.flat[idx] = False
    ring = R + r * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], -1)


_CUBE = [[[-1, -1, s], [2, 0, 0], [0, 2, 0]] for s in (-1, 1)] + \
        [[[-1, s, -1], [2, 0, 0], [0, 0, 2]] for s in (-1, 1)] + \
        [[[s, -1, -1], [0, 2, 0], [0, 0, 2]] for s in (-1, 1)]
_APEX, _BASE = [0, 0, 1.2], [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]
_PYRAMID = [[_BASE[0], _BASE[1], _BASE[2]], [_BASE[0], _BASE[2], _BASE[3]]] + \
           [[_BASE[i], _BASE[(i + 1) % 4], _APEX] for i in range(4)]

SHAPES = {
    "sphere": _sphere,
    "cube": lambda rng, n, p: _faces(rng, n, p, _CUBE),
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "sheet": lambda rng, n, p: _faces(rng, n, p, [[[-1, -1, 0], [2, 0, 0], [0, 2, 0]]]),
    "pyramid": lambda rng, n, p: _triangles(rng, n, p, _PYRAMID),
    "ellipsoid": lambda rng, n, p: _sphere(rng, n, p) * np.array([1.0, 0.6, 0.3]),
}
"""Class name -> surface sampler ``(rng, n, num_points) -> (n, num_points, 3)``; the label
of a class is its index in this order."""


def _rotations(rng, n):
    """Haar-random rotations (n, 3, 3): QR of Gaussian matrices with the sign fixed."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]                                          # det +1, not a reflection
    return q


def point_shapes(n_per_class: int, num_points: int, seed: Seed, *, stretch: float = 0.15,
                 noise: float = 0.01) -> Tuple[Tensor, Tensor]:
    """Point clouds on the surfaces of the :data:`SHAPES`: ``(points (S, num_points, 3)
    float32, labels (S,) int64)``, ``S = n_per_class * len(SHAPES)``, in shuffled order.

    Each cloud: its surface sample, each axis scaled by a factor in
    ``[1 - stretch, 1 + stretch]``, a random rotation, Gaussian noise of std ``noise``, then
    centred on its mean and scaled so its farthest point is at radius 1 (the unit ball)."""
    _check_positive(n_per_class=n_per_class, num_points=num_points)
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for label, sample in enumerate(SHAPES.values()):
        pts = sample(rng, n_per_class, num_points)
        pts = pts * rng.uniform(1 - stretch, 1 + stretch, (n_per_class, 1, 3))
        pts = pts @ _rotations(rng, n_per_class).transpose(0, 2, 1)
        pts = pts + noise * rng.standard_normal(pts.shape)
        pts = pts - pts.mean(1, keepdims=True)
        pts = pts / np.linalg.norm(pts, axis=-1).max(1)[:, None, None]
        clouds.append(pts)
        labels.append(np.full(n_per_class, label))
    order = rng.permutation(n_per_class * len(SHAPES))
    points = torch.from_numpy(np.concatenate(clouds)[order].astype(np.float32))
    return points, torch.from_numpy(np.concatenate(labels)[order].astype(np.int64))


# --------------------------------------------------------------------------------------
# sequence tasks
# --------------------------------------------------------------------------------------
def _masked_targets(n, T, answer_pos, answers) -> Tuple[Tensor, Tensor]:
    targets = np.full((n, T), IGNORE, np.int64)
    targets[:, answer_pos] = answers
    mask = targets != IGNORE
    return torch.from_numpy(targets), torch.from_numpy(mask)


def selective_copying(n: int, seq_len: int, num_tokens: int, vocab: int,
                      seed: Seed) -> SequenceData:
    """Mamba's selective copying: ``seq_len`` positions of the blank token 0 holding
    ``num_tokens`` data tokens (ids ``1..vocab-1``) at random positions (in order), then
    ``num_tokens`` marker tokens (id ``vocab``). The targets are at the markers: the k-th
    marker's output is the k-th data token. Total length ``seq_len + num_tokens``,
    ``vocab_size = vocab + 1``."""
    _check_positive(n=n, seq_len=seq_len, num_tokens=num_tokens)
    if num_tokens > seq_len:
        raise ValueError(f"num_tokens ({num_tokens}) must be <= seq_len ({seq_len})")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        raise ValueError(f"vocab must be an int >= 2 (blank + data ids), got {vocab!r}")
    rng = np.random.default_rng(seed)
    T = seq_len + num_tokens
    data = rng.integers(1, vocab, size=(n, num_tokens))
    # distinct sorted positions per row: the first num_tokens of a random permutation
    where = np.sort(np.argsort(rng.random((n, seq_len)), axis=1)[:, :num_tokens], axis=1)
    inputs = np.zeros((n, T), np.int64)
    np.put_along_axis(inputs, where, data, axis=1)
    inputs[:, seq_len:] = vocab
    targets, mask = _masked_targets(n, T, np.arange(seq_len, T), data)
    return SequenceData(torch.from_numpy(inputs), targets, mask, vocab + 1)


def associative_recall(n: int, num_pairs: int, vocab: int, seed: Seed) -> SequenceData:
    """Associative recall: ``k_1 v_1 ... k_P v_P q`` with distinct keys drawn from ids
    ``[1, vocab // 2)`` and values from ``[vocab // 2, vocab)`` (id 0 unused), ``q`` one of
    the keys; the target at the last position is the value paired with ``q``. Length
    ``2 * num_pairs + 1``, ``vocab_size = vocab``."""
    _check_positive(n=n, num_pairs=num_pairs)
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab // 2 - 1 < num_pairs:
        raise ValueError(f"vocab must be an int with vocab // 2 - 1 >= num_pairs "
                         f"({num_pairs}) distinct keys, got {vocab!r}")
    rng = np.random.default_rng(seed)
    half = vocab // 2
    keys = 1 + np.argsort(rng.random((n, half - 1)), axis=1)[:, :num_pairs]
    values = rng.integers(half, vocab, size=(n, num_pairs))
    which = rng.integers(0, num_pairs, size=n)
    T = 2 * num_pairs + 1
    inputs = np.zeros((n, T), np.int64)
    inputs[:, 0:-1:2], inputs[:, 1:-1:2] = keys, values
    inputs[:, -1] = keys[np.arange(n), which]
    targets, mask = _masked_targets(n, T, [T - 1], values[np.arange(n), which][:, None])
    return SequenceData(torch.from_numpy(inputs), targets, mask, vocab)
