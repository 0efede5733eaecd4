"""ImageFolder / ImageNet layouts and image transforms written with torch (no torchvision).

On-disk layouts:

- :class:`ImageFolder` (ImageNet ``train/`` and, re-sorted into class folders, ``val/``)::

      root/<class_name>/<any name>.{jpg,jpeg,png,ppm,bmp,pgm,tif,tiff,webp}

  Classes are the sub-folder names, sorted; ``class_to_idx`` maps each to its index. Files
  with other extensions (and hidden files) are ignored; images are loaded with PIL and
  converted to RGB.
- :class:`ImageList` (ImageNet's flat validation layout)::

      root/ILSVRC2012_val_00000001.JPEG ...
      labels.txt: one "<file name> <label>" line per image, the label an int index or a
      class name (e.g. a WordNet id "n01440764") looked up in ``class_to_idx``

Images become float (3, H, W) tensors in [0, 1] (:func:`to_tensor`); :func:`resize`,
:func:`center_crop`, :func:`normalize`, :class:`EvalTransform` and :class:`TrainTransform`
act on such tensors.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "find_classes", "load_rgb",
           "to_tensor", "resize", "center_crop", "normalize", "EvalTransform", "TrainTransform",
           "eval_transform", "ImageFolder", "ImageList"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def _check_dir(root, what: str) -> str:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what}: no such directory {root!r}")
    return root


def find_classes(root) -> Tuple[List[str], Dict[str, int]]:
    """The sorted class folder names under ``root`` and their ``class_to_idx``."""
    root = _check_dir(root, "ImageFolder root")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"ImageFolder root {root!r}: expected one sub-folder per class "
                         "(root/<class_name>/<image>), found none")
    return classes, {c: i for i, c in enumerate(classes)}


def load_rgb(path):
    """The image file at ``path`` as an RGB PIL image (PIL is imported here)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("itnet_ext.data.images needs Pillow to read image files "
                          "(pip install pillow)") from e
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def to_tensor(img) -> Tensor:
    """A PIL image or (H, W, 3) uint8 array -> float32 (3, H, W) in [0, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None].repeat(3, -1)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def resize(x: Tensor, size: Union[int, Tuple[int, int]]) -> Tensor:
    """Bilinear (antialiased) resize of (C, H, W) / (B, C, H, W): an int sets the shorter
    side (aspect ratio kept), a pair sets (H, W)."""
    squeeze = x.dim() == 3
    xb = x[None] if squeeze else x
    H, W = xb.shape[-2:]
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"resize: size must be positive, got {size}")
        if H <= W:
            out = (size, max(1, int(round(W * size / H))))
        else:
            out = (max(1, int(round(H * size / W))), size)
    else:
        out = tuple(int(s) for s in size)
    if out != (H, W):
        xb = F.interpolate(xb, size=out, mode="bilinear", align_corners=False, antialias=True)
    return xb[0] if squeeze else xb


def center_crop(x: Tensor, size: Union[int, Tuple[int, int]]) -> Tensor:
    """The central (h, w) window of (..., H, W) (padding with zeros where it is smaller)."""
    h, w = (size, size) if isinstance(size, int) else size
    H, W = x.shape[-2:]
    if h > H or w > W:
        ph, pw = max(0, h - H), max(0, w - W)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def normalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """(x - mean) / std per channel of (C, H, W) / (B, C, H, W)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


class EvalTransform:
    """Resize the shorter side to ``round(image_size / crop_fraction)``, center crop to
    ``image_size``, normalize (the standard ImageNet evaluation pipeline)."""

    def __init__(self, image_size: int, crop_fraction: float = 0.875, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        self.image_size, self.mean, self.std = image_size, mean, std
        self.resize_size = int(math.floor(image_size / crop_fraction + 0.5))

    def __call__(self, x: Tensor) -> Tensor:
        x = center_crop(resize(x, self.resize_size), self.image_size)
        return normalize(x, self.mean, self.std)


def eval_transform(image_size: int, crop_fraction: float = 0.875) -> EvalTransform:
    return EvalTransform(image_size, crop_fraction)


class TrainTransform:
    """Random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform),
    resize to ``image_size``, horizontal flip with probability 1/2, normalize. Draws from
    ``generator`` (default: torch's global generator, seeded per DataLoader worker)."""

    def __init__(self, image_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, generator: Optional[torch.Generator] = None):
        self.image_size, self.scale, self.ratio = image_size, scale, ratio
        self.mean, self.std, self.generator = mean, std, generator

    def _u(self, lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        h, w = H, W
        for _ in range(10):
            area = H * W * self._u(*self.scale)
            ar = math.exp(self._u(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if 0 < cw <= W and 0 < ch <= H:
                h, w = ch, cw
                break
        top = int(torch.randint(0, H - h + 1, (), generator=self.generator))
        left = int(torch.randint(0, W - w + 1, (), generator=self.generator))
        x = resize(x[..., top:top + h, left:left + w], (self.image_size, self.image_size))
        if float(torch.rand((), generator=self.generator)) < 0.5:
            x = x.flip(-1)
        return normalize(x, self.mean, self.std)


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class_name>/<image>`` -> (image tensor, class index).

    ``samples``: sorted (path, class index) pairs; ``classes``, ``class_to_idx``: as
    :func:`find_classes`. ``transform`` maps the float (3, H, W) tensor in [0, 1] (default:
    none). Raises FileNotFoundError for a missing root, ValueError when there are no class
    folders or no image files in them."""

    def __init__(self, root, transform: Optional[Callable[[Tensor], Tensor]] = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = os.fspath(root)
        self.classes, self.class_to_idx = find_classes(self.root)
        self.transform, self.extensions = transform, tuple(e.lower() for e in extensions)
        self.samples = []
        for c in self.classes:
            d = os.path.join(self.root, c)
            for dirpath, _, files in sorted(os.walk(d, followlinks=True)):
                for f in sorted(files):
                    if _is_image(f, self.extensions):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise ValueError(f"ImageFolder root {self.root!r}: no image files with extensions "
                             f"{self.extensions} in its class folders {self.classes}")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        x = to_tensor(load_rgb(path))
        return (self.transform(x) if self.transform is not None else x), target


class ImageList(ImageFolder):
    """Flat images plus a label file (ImageNet's validation layout): each non-empty line of
    ``labels_file`` is ``<file name relative to root> <label>``, the label an int or a class
    name looked up in ``class_to_idx`` (e.g. the train set's, to share its indices)."""

    def __init__(self, root, labels_file, class_to_idx: Optional[Dict[str, int]] = None,
                 transform: Optional[Callable[[Tensor], Tensor]] = None):
        self.root = _check_dir(root, "ImageList root")
        labels_file = os.fspath(labels_file)
        if not os.path.isfile(labels_file):
            raise FileNotFoundError(f"ImageList labels_file: no such file {labels_file!r}")
        self.class_to_idx = dict(class_to_idx or {})
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.transform, self.samples = transform, []
        with open(labels_file) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{labels_file}:{n}: expected '<file name> <label>', "
                                     f"got {line.rstrip()!r}")
                name, label = parts
                if label.lstrip("-").isdigit():
                    target = int(label)
                elif label in self.class_to_idx:
                    target = self.class_to_idx[label]
                else:
                    raise ValueError(f"{labels_file}:{n}: label {label!r} is neither an int "
                                     "nor a class name of class_to_idx")
                path = os.path.join(self.root, name)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{labels_file}:{n}: image {path!r} does not exist")
                self.samples.append((path, target))
        if not self.samples:
            raise ValueError(f"ImageList labels_file {labels_file!r}: no '<file> <label>' lines")
        self.targets = [t for _, t in self.samples]
