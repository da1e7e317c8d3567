"""Streaming of large images (ImageNet-LT, iNaturalist, Places-LT): Pillow decoding in
DataLoader workers and the standard 224-pixel transforms, written with Pillow and torch.

Train: random-resized crop (scale 0.08-1, ratio 3/4-4/3) to 224 and horizontal flip.
Eval: resize the shorter side to 256, centre-crop 224. Both normalise with the
ImageNet mean and standard deviation unless another normalisation is given.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from ..errors import LortError
from .augment import CIFAR_MEAN, CIFAR_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Named input normalisations (mean, std per RGB channel, on [0, 1] pixels).
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalization(name: str | None = None, mean=None, std=None) -> tuple[tuple, tuple]:
    """``(mean, std)`` from a name in :data:`NORMALIZATIONS` or explicit 3-channel values
    (explicit values win; both must then be given, std > 0)."""
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise LortError("give both mean and std (three values each), or a normalisation name")
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3:
            raise LortError(f"mean and std need three values (R, G, B), got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise LortError(f"std values must be > 0, got {std}")
        return mean, std
    if name not in NORMALIZATIONS:
        raise LortError(f"unknown normalisation {name!r}; choose {', '.join(NORMALIZATIONS)} or give mean and std")
    return NORMALIZATIONS[name]


def random_resized_crop(img: Image.Image, size: int, rng: random.Random, scale=(0.08, 1.0)) -> Image.Image:
    w, h = img.size
    area = w * h
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x = rng.randint(0, w - cw)
            y = rng.randint(0, h - ch)
            return img.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    side = min(w, h)  # fall back to a centre crop
    x, y = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x, y, x + side, y + side))


def center_crop(img: Image.Image, size: int, resize: int) -> Image.Image:
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    x, y = (w - size) // 2, (h - size) // 2
    return img.crop((x, y, x + size, y + size))


def to_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class ImagePathDataset(torch.utils.data.Dataset):
    """Decodes ``paths[i]`` with Pillow; ``train`` selects the augmenting transform.

    Randomness comes from a per-sample ``random.Random(seed, epoch, index)`` so a run is
    reproducible whatever the number of workers; call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        train: bool,
        size: int = 224,
        seed: int = 0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ):
        self.paths = paths
        self.mean, self.std = mean, std
        self.labels = np.asarray(labels, dtype=np.int64)
        self.train = train
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise LortError(f"{path}: unreadable image ({exc})") from None
        if self.train:
            rng = random.Random(f"{self.seed}-{self.epoch}-{i}")
            img = random_resized_crop(img, self.size, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = center_crop(img, self.size, round(self.size * 256 / 224))
        return to_tensor(img, self.mean, self.std), int(self.labels[i])
