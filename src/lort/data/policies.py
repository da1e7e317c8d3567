"""RandAugment and AutoAugment's CIFAR-10 policy as batched tensor operations.

Every image of a batch draws its own operations and magnitudes, and each operation runs
once per batch on the images that drew it: a handful of tensor ops per batch, no
per-sample Python. Images are ``float (N, H, W, 3)`` in ``[0, 255]`` (the uint8 cache's
NHWC layout); every operation rounds and clips back to that range, as the PIL
originals work on uint8. The images may sit on any device; the draws are made on the CPU
(from the caller's generator) and sent to the images' device.

Sources: AutoAugment (Cubuk et al., CVPR 2019), its CIFAR-10 policy table and magnitude
ranges (10 magnitude bins); RandAugment (Cubuk et al., NeurIPS 2020 workshops), 14
operations, N operations per image at one magnitude M on a 0-30 scale. Signed
operations (rotate, shear, translate, the enhancements) take a random sign. Geometric
operations fill uncovered pixels with grey 128 and sample nearest neighbours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_POLICIES = ("standard", "randaugment", "autoaugment")

FILL = 128.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 150.0 / 331.0  # of the image side (the paper's 150 pixels of 331)
MAX_ROTATE = 30  # degrees
MAX_MAGNITUDE = 30  # RandAugment's magnitude scale, 0 to 30
MAX_ENHANCE = 0.9  # brightness, colour, contrast, sharpness factor 1 +- 0.9

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
RANDAUGMENT_OPS = OPS[:-1]  # RandAugment's 14 (no Invert)
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}

# AutoAugment's CIFAR-10 policy: 25 sub-policies of two (operation, probability, magnitude bin 0-9).
CIFAR10_POLICY = (
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
)


def _finish(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0.0, 255.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's ``L`` conversion), shape (n, H, W, 1)."""
    return (x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114).round()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``degenerate + factor * (x - degenerate)``, factor per image,
    truncated to an integer as PIL's blend does."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (x - degenerate)).clamp_(0.0, 255.0).floor_()


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Output pixel p samples input ``theta @ [p, 1]`` (normalised coordinates)."""
    nchw = x.permute(0, 3, 1, 2) - FILL  # zero padding of the shifted image = grey fill
    grid = F.affine_grid(theta.to(x.device), list(nchw.shape), align_corners=False)
    out = F.grid_sample(nchw, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out + FILL).permute(0, 2, 3, 1).contiguous()


def _identity_theta(n: int) -> torch.Tensor:
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per image and channel, by batched histograms."""
    n, h, w, c = x.shape
    v = x.round().long().clamp_(0, 255).permute(0, 3, 1, 2).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    idx = torch.arange(256, device=x.device).expand(n * c, 256)
    last = torch.where(hist > 0, idx, torch.full_like(idx, -1)).max(1).values
    step = (h * w - hist.gather(1, last[:, None]).squeeze(1)) // 255
    cum = torch.cumsum(hist, 1) - hist  # counts below each value
    safe = step.clamp(min=1)[:, None]
    lut = ((cum + safe // 2) // safe).clamp_(max=255)
    lut = torch.where((step > 0)[:, None], lut, idx)
    out = lut.gather(1, v).float()
    return out.reshape(n, c, h, w).permute(0, 2, 3, 1).contiguous()


def apply_op(name: str, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` on images ``x`` with per-image signed ``level`` in ``[-1, 1]`` (on the
    CPU or on ``x``'s device)."""
    n, h, w, _ = x.shape
    if name == "Identity":
        return x
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        level = level.cpu()  # theta is built on the CPU, then sent with the grid
        theta = _identity_theta(n)
        if name == "ShearX":
            theta[:, 0, 1] = level * MAX_SHEAR
        elif name == "ShearY":
            theta[:, 1, 0] = level * MAX_SHEAR
        elif name == "TranslateX":
            theta[:, 0, 2] = -2.0 * level * MAX_TRANSLATE
        elif name == "TranslateY":
            theta[:, 1, 2] = -2.0 * level * MAX_TRANSLATE
        else:
            a = level * math.radians(MAX_ROTATE)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        return _affine(x, theta)
    level = level.to(x.device)
    factor = 1.0 + level * MAX_ENHANCE
    if name == "Brightness":
        return _blend(torch.zeros_like(x), x, factor)
    if name == "Color":
        return _blend(_gray(x).expand_as(x), x, factor)
    if name == "Contrast":
        mean = (_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()  # PIL: the rounded mean of L
        return _blend(mean.expand_as(x), x, factor)
    if name == "Sharpness":
        kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
        nchw = x.permute(0, 3, 1, 2).reshape(n * 3, 1, h, w)
        smooth = F.conv2d(nchw, kernel.view(1, 1, 3, 3)).round()
        blurred = nchw.clone()
        blurred[:, :, 1:-1, 1:-1] = smooth  # PIL keeps the border pixels
        blurred = blurred.reshape(n, 3, h, w).permute(0, 2, 3, 1)
        return _blend(blurred, x, factor)
    if name == "Posterize":
        bits = (8 - (level.abs() * 4).round()).clamp(1, 8)
        q = torch.pow(2.0, 8 - bits).view(-1, 1, 1, 1)
        return torch.floor(x / q) * q
    if name == "Solarize":
        threshold = (255.0 * (1 - level.abs())).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 255.0 - x, x)
    if name == "AutoContrast":
        lo = x.amin(dim=(1, 2), keepdim=True)
        hi = x.amax(dim=(1, 2), keepdim=True)
        scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
        offset = torch.where(hi > lo, lo, torch.zeros_like(lo))
        return ((x - offset) * scale + 1e-3).floor_().clamp_(0.0, 255.0)  # PIL's lookup table truncates
    if name == "Equalize":
        return _equalize(x)
    if name == "Invert":
        return 255.0 - x
    raise ValueError(f"unknown augmentation operation {name!r}")


class BatchPolicy:
    """Draws and applies ``slots`` operations per image: RandAugment or AutoAugment."""

    def __init__(self, policy: str, ops: int = 2, magnitude: int = 9) -> None:
        if policy not in ("randaugment", "autoaugment"):
            raise ValueError(f"unknown augmentation policy {policy!r}; known: randaugment, autoaugment")
        self.policy = policy
        self.ops = ops
        self.magnitude = magnitude
        if policy == "autoaugment":
            table = [[OPS.index(op) for op, _, _ in sub] for sub in CIFAR10_POLICY]
            self._op = torch.tensor(table)  # (25, 2)
            self._prob = torch.tensor([[p for _, p, _ in sub] for sub in CIFAR10_POLICY])
            self._level = torch.tensor([[m / 9.0 for _, _, m in sub] for sub in CIFAR10_POLICY])

    def draw(self, n: int, generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per slot: (operation index into OPS, signed level) per image; index -1 = skipped."""
        slots = []
        if self.policy == "randaugment":
            ids = torch.tensor([OPS.index(op) for op in RANDAUGMENT_OPS])
            for _ in range(self.ops):
                op = ids[torch.randint(0, len(ids), (n,), generator=generator)]
                level = torch.full((n,), self.magnitude / MAX_MAGNITUDE)
                slots.append((op, level))
        else:
            sub = torch.randint(0, len(CIFAR10_POLICY), (n,), generator=generator)
            for k in range(2):
                op = self._op[sub, k].clone()
                keep = torch.rand(n, generator=generator) < self._prob[sub, k]
                op[~keep] = -1
                slots.append((op, self._level[sub, k].clone()))
        for op, level in slots:
            signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            signed = torch.tensor([OPS[i] in SIGNED for i in range(len(OPS))])[op.clamp(min=0)]
            level.mul_(torch.where(signed, signs, torch.ones_like(signs)))
        return slots

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``float (N, H, W, 3)`` in [0, 255] -> augmented, same shape and range. The images
        that drew each operation are found on the CPU and gathered by index on ``x``'s device
        (no boolean mask there, whose indexing would wait for the device)."""
        for op, level in self.draw(len(x), generator):
            for i in torch.unique(op).tolist():
                if i < 0 or OPS[i] == "Identity":
                    continue
                rows = torch.nonzero(op == i).squeeze(1)
                picked = rows.to(x.device)
                x[picked] = apply_op(OPS[i], x[picked], level[rows])
        return x
