"""ModelNet40 as OFF meshes or as the ``modelnet40_ply_hdf5_2048`` HDF5 files.

On-disk layouts:

- :class:`ModelNetOFF` (the Princeton release, ``ModelNet40.zip``)::

      root/<class_name>/<split>/<class_name>_0001.off      split: "train" or "test"

  Each OFF file: a line ``OFF``, a line ``<#vertices> <#faces> <#edges>``, the vertex lines
  ``x y z``, the face lines ``n i_1 ... i_n [colour]``; ``#`` comments and blank lines are
  skipped, and the known malformed header of some ModelNet40 files, ``OFF<#v> <#f> <#e>`` on
  one line, is accepted. Polygons are split into triangle fans; points are sampled on the
  surface with probability proportional to area (:func:`sample_surface`) and scaled into the
  unit sphere (:func:`normalize_unit_sphere`).
- :class:`ModelNetHDF5` (PointNet's ``modelnet40_ply_hdf5_2048``)::

      root/train_files.txt, test_files.txt     one .h5 path per line (as shipped:
                                               "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5";
                                               resolved against root, else by file name)
      root/ply_data_train0.h5 ...               datasets "data" (n, 2048, 3) float32 and
                                               "label" (n, 1) int
      root/shape_names.txt                      optional, the 40 class names in label order
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_off", "sample_surface", "normalize_unit_sphere", "ModelNetOFF", "ModelNetHDF5"]


def read_off(path) -> Tuple[np.ndarray, np.ndarray]:
    """An OFF mesh: (vertices (V, 3) float64, triangles (F, 3) int64), polygons fanned."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OFF file: no such file {path!r}")
    with open(path) as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file, expected a first line 'OFF', got "
                         f"{lines[0][:40] if lines else ''!r}")
    rest = lines[0][3:].strip()                   # "OFF123 456 0": the counts on line one
    if rest:
        counts, body = rest, lines[1:]
    elif len(lines) > 1:
        counts, body = lines[1], lines[2:]
    else:
        raise ValueError(f"{path}: expected a line '<#vertices> <#faces> <#edges>' after 'OFF'")
    try:
        nv, nf = (int(c) for c in counts.split()[:2])
    except ValueError:
        raise ValueError(f"{path}: expected '<#vertices> <#faces> <#edges>' after 'OFF', got "
                         f"{counts!r}") from None
    if nv < 3 or nf < 1 or len(body) < nv + nf:
        raise ValueError(f"{path}: header promises {nv} vertices and {nf} faces, the file has "
                         f"{len(body)} data lines (need >= 3 vertices, >= 1 face)")
    try:
        verts = np.array([[float(t) for t in ln.split()[:3]] for ln in body[:nv]])
    except ValueError:
        raise ValueError(f"{path}: a vertex line is not 'x y z' numbers") from None
    if verts.shape != (nv, 3):
        raise ValueError(f"{path}: expected {nv} vertex lines of 3 coordinates")
    tris: List[Tuple[int, int, int]] = []
    for k, ln in enumerate(body[nv:nv + nf]):
        t = ln.split()
        try:
            n = int(t[0])
            idx = [int(i) for i in t[1:1 + n]]
        except ValueError:
            raise ValueError(f"{path}: face {k} {ln!r} is not 'n i_1 ... i_n'") from None
        if n < 3 or len(idx) != n or min(idx) < 0 or max(idx) >= nv:
            raise ValueError(f"{path}: face {k} {ln!r}: expected n >= 3 vertex indices in "
                             f"[0, {nv})")
        tris.extend((idx[0], idx[j], idx[j + 1]) for j in range(1, n - 1))
    return verts, np.asarray(tris, dtype=np.int64)


def sample_surface(vertices, faces, num_points: int,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """``num_points`` points uniform on the triangles' surface: a face drawn with probability
    proportional to its area, then a uniform point in it (reflected barycentric
    coordinates). (num_points, 3) float32."""
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=1)
    if not bool(area.sum() > 0):
        raise ValueError("sample_surface: the mesh has zero surface area")
    face = torch.multinomial(area, num_points, replacement=True, generator=generator)
    u = torch.rand(num_points, 2, dtype=torch.float64, generator=generator)
    flip = u.sum(1) > 1
    u[flip] = 1 - u[flip]
    p = a[face] + u[:, :1] * (b[face] - a[face]) + u[:, 1:] * (c[face] - a[face])
    return p.float()


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Centre (N, 3) points at their centroid and scale the farthest to norm 1."""
    p = torch.as_tensor(points)
    p = p - p.mean(0, keepdim=True)
    r = p.norm(dim=1).max()
    return p / r if bool(r > 0) else p


def _classes(root) -> List[str]:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ModelNet root: no such directory {root!r}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"ModelNet root {root!r}: expected one folder per class "
                         "(root/<class>/<split>/*.off), found none")
    return classes


class ModelNetOFF(torch.utils.data.Dataset):
    """``root/<class>/<split>/*.off`` -> (points (num_points, 3) float32 in the unit sphere,
    class index). Item ``i`` is sampled with the generator seeded ``(seed, epoch, i)``, so it
    is the same in every worker and run; :meth:`set_epoch` draws new points per epoch."""

    def __init__(self, root, split: str = "train", num_points: int = 1024, seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"ModelNet split {split!r}: expected 'train' or 'test'")
        self.root, self.split, self.num_points, self.seed = os.fspath(root), split, num_points, seed
        self.classes = _classes(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in self.classes:
            d = os.path.join(self.root, c, split)
            if os.path.isdir(d):
                self.samples += [(os.path.join(d, f), self.class_to_idx[c])
                                 for f in sorted(os.listdir(d)) if f.lower().endswith(".off")]
        if not self.samples:
            raise ValueError(f"ModelNet root {self.root!r}: no .off files in "
                             f"<class>/{split}/ for the classes {self.classes}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        v, f = read_off(path)
        g = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch * 7_919 + i) % (2 ** 63))
        return normalize_unit_sphere(sample_surface(v, f, self.num_points, g)), label


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError("ModelNetHDF5 needs h5py to read the modelnet40_ply_hdf5_2048 "
                          "files (pip install h5py)") from e
    return h5py


class ModelNetHDF5(torch.utils.data.Dataset):
    """The ``modelnet40_ply_hdf5_2048`` files of ``split`` ("train" / "test"), loaded into
    memory -> (points (num_points, 3) float32, class index): the first ``num_points`` (default:
    all 2048) points of each shape (they are in random order), unit-sphere normalised when
    ``normalize``."""

    def __init__(self, root, split: str = "train", num_points: Optional[int] = None,
                 normalize: bool = False):
        h5py = _h5py()
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ModelNet HDF5 root: no such directory {self.root!r}")
        if split not in ("train", "test"):
            raise ValueError(f"ModelNet split {split!r}: expected 'train' or 'test'")
        listing = os.path.join(self.root, f"{split}_files.txt")
        if not os.path.isfile(listing):
            raise FileNotFoundError(f"ModelNet HDF5: no file list {listing!r} (expected one .h5 "
                                    "path per line)")
        with open(listing) as fh:
            names = [ln.strip() for ln in fh if ln.strip()]
        if not names:
            raise ValueError(f"{listing}: lists no .h5 files")
        data, labels = [], []
        for name in names:
            path = next((p for p in (name, os.path.join(self.root, name),
                                     os.path.join(self.root, os.path.basename(name)))
                         if os.path.isfile(p)), None)
            if path is None:
                raise FileNotFoundError(f"{listing}: listed file {name!r} not found under "
                                        f"{self.root!r}")
            with h5py.File(path, "r") as h:
                if "data" not in h or "label" not in h:
                    raise ValueError(f"{path}: expected datasets 'data' (n, P, 3) and 'label' "
                                     f"(n, 1), found {sorted(h.keys())}")
                d, lab = np.asarray(h["data"], dtype=np.float32), np.asarray(h["label"])
            if d.ndim != 3 or d.shape[2] != 3 or lab.reshape(-1).shape[0] != d.shape[0]:
                raise ValueError(f"{path}: expected 'data' (n, P, 3) and 'label' (n, 1), got "
                                 f"{d.shape} and {lab.shape}")
            data.append(d)
            labels.append(lab.reshape(-1).astype(np.int64))
        self.data = torch.from_numpy(np.concatenate(data))
        self.labels = torch.from_numpy(np.concatenate(labels))
        if num_points is None:
            num_points = self.data.shape[1]
        if not 1 <= num_points <= self.data.shape[1]:
            raise ValueError(f"num_points must be in [1, {self.data.shape[1]}], got {num_points}")
        self.num_points, self.normalize = num_points, normalize
        names_file = os.path.join(self.root, "shape_names.txt")
        self.classes = None
        if os.path.isfile(names_file):
            with open(names_file) as fh:
                self.classes = [ln.strip() for ln in fh if ln.strip()]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int):
        p = self.data[i, :self.num_points]
        return (normalize_unit_sphere(p) if self.normalize else p.clone()), int(self.labels[i])
