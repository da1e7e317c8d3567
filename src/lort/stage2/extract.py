"""Feature cache: run the frozen backbone once (eval mode) over every split and keep the
features, the labels and the stage-1 classifier; optionally extra augmented views of
the training images (random crop + flip), each a full pass.

Under torchrun (a process group is initialised) every process computes the features of
every ``world_size``-th sample and all processes receive the whole array in order."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..data import LongTailedDataset, Split
from ..data.augment import BatchAugment, iterate_batches
from ..data.features import FeatureSet
from ..data.transforms import ImagePathDataset
from ..errors import LortError
from ..stage1.train import autocast


def _shard() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_shards(local: torch.Tensor, n: int, world: int, device: torch.device) -> torch.Tensor:
    """Reassemble strided shards (process r holds samples r, r + W, ...) on every process."""
    m = -(-n // world)
    padded = torch.zeros((m, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(padded, device=backend_device) for _ in range(world)]
    dist.all_gather(parts, padded.to(backend_device))
    return torch.stack([p.cpu() for p in parts], dim=1).reshape(m * world, *local.shape[1:])[:n]


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
    features=None,
) -> np.ndarray:
    """``model.forward_features`` over ``split`` in order. ``augment_seed`` draws a random
    crop+flip view (seeded); ``flip`` takes the horizontally flipped image. ``amp`` as in
    stage 1: ``auto`` runs the backbone under bf16 autocast where the hardware supports it
    natively (features are returned as float32). ``features`` maps an image batch to
    features (default ``model.forward_features``; see :func:`lort.surgery.feature_fn`)."""
    device = device or torch.device("cpu")
    features = features or model.forward_features
    model.eval()
    rank, world = _shard()
    n = len(split.labels)
    idx = np.arange(rank, n, world)
    labels = np.asarray(split.labels)[idx]
    if split.images is not None:
        aug = BatchAugment() if augment_seed is not None else None
        gen = torch.Generator().manual_seed(augment_seed) if augment_seed is not None else None
        batches = iterate_batches(split.images[idx] if world > 1 else split.images, labels, batch_size, False, gen, aug)
    else:
        ds = ImagePathDataset([split.paths[i] for i in idx], labels, train=augment_seed is not None, size=input_size,
                              seed=augment_seed or 0)  # fmt: skip
        batches = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    outs = []
    for x, _ in tqdm(batches, desc=desc, disable=desc is None or rank > 0, leave=False, unit="batch"):
        if flip:
            x = x.flip(-1)
        x = x.to(device, memory_format=torch.channels_last)
        with autocast(amp, device):
            try:
                out = features(x)
            except LortError:
                raise
            except Exception as exc:  # a user's model that cannot take this batch: say which
                raise LortError(f"the model failed on an input batch of shape {tuple(x.shape)}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc  # fmt: skip
        if out.dim() != 2:
            raise LortError(f"the feature function returned shape {tuple(out.shape)}; expected (batch, features)")
        outs.append(out.float().cpu())
    local = torch.cat(outs) if outs else torch.zeros(0, 0)
    if world > 1:
        return _gather_shards(local, n, world, device).numpy()
    return local.numpy()


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
    features=None,
    classifier: nn.Linear | None = None,
) -> FeatureSet:
    """A :class:`FeatureSet` of train (``views`` views: the plain image, then augmented
    ones), val and test features, with the model's classifier as ``init_weight``.
    ``tta_flip`` (off by default) averages the val/test features of each image and its
    horizontal flip; it is recorded in the feature set and in every report. ``features``
    replaces ``model.forward_features``; ``classifier`` replaces ``model.get_classifier()``
    (kept as ``init_weight`` only when it has one output per class)."""
    splits = {}
    xs, ys = [], []
    for v in range(views):
        xs.append(split_features(model, ds.train, batch_size, device, input_size,
                                 None if v == 0 else seed * 1000 + v, workers=workers, features=features,
                                 desc=f"train features (view {v + 1}/{views})" if progress else None))  # fmt: skip
        ys.append(ds.train.labels)
    splits["train"] = (np.concatenate(xs), np.concatenate(ys))
    for name in ("val", "test"):
        split = getattr(ds, name)
        if split is not None and len(split):
            feats = split_features(model, split, batch_size, device, input_size, workers=workers,
                                   desc=f"{name} features" if progress else None, features=features)  # fmt: skip
            if tta_flip:  # average with the flipped image: equal to averaging a linear classifier's logits
                flipped = split_features(model, split, batch_size, device, input_size, flip=True, workers=workers,
                                         features=features)  # fmt: skip
                feats = 0.5 * (feats + flipped)
            splits[name] = (feats, split.labels)
    fc = classifier if classifier is not None else getattr(model, "get_classifier", lambda: None)()
    init_weight = init_bias = None
    if fc is not None and tuple(fc.weight.shape) == (ds.num_classes, splits["train"][0].shape[1]):
        init_weight = fc.weight.detach().float().cpu().numpy()
        init_bias = np.zeros(ds.num_classes, np.float32) if fc.bias is None else fc.bias.detach().float().cpu().numpy()
    return FeatureSet(
        splits=splits,
        classes=list(ds.classes),
        init_weight=init_weight,
        init_bias=init_bias,
        meta={"views": views, "train_images": len(ds.train), "tta_flip": tta_flip},
    )
