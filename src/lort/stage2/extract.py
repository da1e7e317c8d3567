"""Feature cache: run the frozen backbone once (eval mode) over every split and keep the
features, the labels and the stage-1 classifier; optionally extra augmented views of
the training images (random crop + flip), each a full pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data import LongTailedDataset, Split
from ..data.augment import BatchAugment, iterate_batches
from ..data.features import FeatureSet
from ..data.transforms import ImagePathDataset
from ..stage1.train import autocast


@torch.no_grad()
def split_features(
    model: nn.Module,
    split: Split,
    batch_size: int = 512,
    device: torch.device | None = None,
    input_size: int = 32,
    augment_seed: int | None = None,
    flip: bool = False,
    workers: int = 0,
    desc: str | None = None,
    amp: str = "auto",
) -> np.ndarray:
    """``model.forward_features`` over ``split`` in order. ``augment_seed`` draws a random
    crop+flip view (seeded); ``flip`` takes the horizontally flipped image. ``amp`` as in
    stage 1: ``auto`` runs the backbone under bf16 autocast where the hardware supports it
    natively (features are returned as float32)."""
    device = device or torch.device("cpu")
    model.eval()
    if split.images is not None:
        aug = BatchAugment() if augment_seed is not None else None
        gen = torch.Generator().manual_seed(augment_seed) if augment_seed is not None else None
        batches = iterate_batches(split.images, split.labels, batch_size, False, gen, aug)
    else:
        ds = ImagePathDataset(split.paths, split.labels, train=augment_seed is not None, size=input_size,
                              seed=augment_seed or 0)  # fmt: skip
        batches = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    outs = []
    for x, _ in tqdm(batches, desc=desc, disable=desc is None, leave=False, unit="batch"):
        if flip:
            x = x.flip(-1)
        x = x.to(device, memory_format=torch.channels_last)
        with autocast(amp, device):
            outs.append(model.forward_features(x).float().cpu())
    return torch.cat(outs).numpy()


def extract_features(
    model: nn.Module,
    ds: LongTailedDataset,
    views: int = 1,
    batch_size: int = 512,
    device: torch.device | None = None,
    input_size: int = 32,
    seed: int = 0,
    workers: int = 0,
    progress: bool = False,
    tta_flip: bool = False,
) -> FeatureSet:
    """A :class:`FeatureSet` of train (``views`` views: the plain image, then augmented
    ones), val and test features, with the model's classifier as ``init_weight``.
    ``tta_flip`` (off by default) averages the val/test features of each image and its
    horizontal flip; it is recorded in the feature set and in every report."""
    splits = {}
    xs, ys = [], []
    for v in range(views):
        xs.append(split_features(model, ds.train, batch_size, device, input_size,
                                 None if v == 0 else seed * 1000 + v, workers=workers,
                                 desc=f"train features (view {v + 1}/{views})" if progress else None))  # fmt: skip
        ys.append(ds.train.labels)
    splits["train"] = (np.concatenate(xs), np.concatenate(ys))
    for name in ("val", "test"):
        split = getattr(ds, name)
        if split is not None and len(split):
            feats = split_features(model, split, batch_size, device, input_size, workers=workers,
                                   desc=f"{name} features" if progress else None)  # fmt: skip
            if tta_flip:  # average with the flipped image: equal to averaging a linear classifier's logits
                flipped = split_features(model, split, batch_size, device, input_size, flip=True, workers=workers)
                feats = 0.5 * (feats + flipped)
            splits[name] = (feats, split.labels)
    fc = model.get_classifier()
    return FeatureSet(
        splits=splits,
        classes=list(ds.classes),
        init_weight=fc.weight.detach().cpu().numpy().astype(np.float32),
        init_bias=fc.bias.detach().cpu().numpy().astype(np.float32),
        meta={"views": views, "train_images": len(ds.train), "tta_flip": tta_flip},
    )
