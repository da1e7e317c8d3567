"""Feature cache: run the frozen backbone once (eval mode) over every split and keep the
features, the labels and the stage-1 classifier; optionally extra augmented views of
the training images (random crop + flip), each a full pass.

Under torchrun (a process group is initialised) every process computes the features of
every ``world_size``-th sample and all processes receive the whole array in order."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import LongTailedDataset, Split
from ..data.augment import BatchAugment, iterate_batches
from ..data.features import FeatureSet
from ..data.transforms import ImagePathDataset
from ..errors import LortError
from ..runtime.precision import autocast, choose_precision


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
    input_size: int | None = None,
    augment_seed: int | None = None,
    flip: bool = False,
    workers: int = 0,
    desc: str | None = None,
    amp: str = "auto",
    features=None,
    normalize: tuple[tuple, tuple] | None = None,
) -> np.ndarray:
    """``model.forward_features`` over ``split`` in order. ``augment_seed`` draws a random
    crop+flip view (seeded); ``flip`` takes the horizontally flipped image. ``amp`` as in
    stage 1: ``auto`` runs the backbone under bf16 autocast where the hardware has native
    bf16 (features are returned as float32). ``features`` maps an image batch to
    features (default ``model.forward_features``; see :func:`lort.model_files.feature_fn`).

    ``input_size``: image files are cropped to it (default 224); small in-memory images
    are resized to it (bilinear, antialiased) when given, else kept at their size.
    ``normalize``: ``(mean, std)``; default the one stage 1 uses (CIFAR's for small
    images, ImageNet's for image files)."""
    device = device or torch.device("cpu")
    features = features or model.forward_features
    precision = choose_precision(amp, device)
    model.eval()
    rank, world = _shard()
    n = len(split.labels)
    idx = np.arange(rank, n, world)
    labels = np.asarray(split.labels)[idx]
    norm = {} if normalize is None else {"mean": normalize[0], "std": normalize[1]}
    if split.images is not None:
        aug = BatchAugment(**norm) if augment_seed is not None else BatchAugment(pad=0, flip=False, **norm)
        gen = torch.Generator().manual_seed(augment_seed) if augment_seed is not None else None
        images = split.images[idx] if world > 1 else split.images
        batches = iterate_batches(
            images,
            labels,
            batch_size,
            False,
            gen,
            aug if augment_seed is not None else None,
            normalizer=aug,
            device=device,
        )
    else:
        ds = ImagePathDataset(
            [split.paths[i] for i in idx],
            labels,
            train=augment_seed is not None,
            size=input_size or 224,
            seed=augment_seed or 0,
            **norm,
        )
        batches = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    resize = input_size if split.images is not None else None
    outs = []
    for x, _ in tqdm(batches, desc=desc, disable=desc is None or rank > 0, leave=False, unit="batch"):
        if flip:
            x = x.flip(-1)
        if resize and tuple(x.shape[-2:]) != (resize, resize):
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
        x = x.to(device, memory_format=torch.channels_last)
        with autocast(precision, device):
            try:
                out = features(x)
            except LortError:
                raise
            except Exception as exc:  # a user's model that cannot take this batch: say which
                raise LortError(
                    f"the model failed on an input batch of shape {tuple(x.shape)}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
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
    input_size: int | None = None,
    seed: int = 0,
    workers: int = 0,
    progress: bool = False,
    tta_flip: bool = False,
    features=None,
    classifier: nn.Linear | None = None,
    amp: str = "auto",
    normalize: tuple[tuple, tuple] | None = None,
) -> FeatureSet:
    """A :class:`FeatureSet` of train (``views`` views: the plain image, then augmented
    ones), val and test features, with the model's classifier as ``init_weight``.
    ``tta_flip`` (off by default) averages the val/test features of each image and its
    horizontal flip; it is recorded in the feature set and in every report. ``features``
    replaces ``model.forward_features``; ``classifier`` replaces ``model.get_classifier()``
    (kept as ``init_weight`` only when it has one output per class). ``input_size``,
    ``normalize`` and ``amp`` as in :func:`split_features`; all three are recorded."""
    device = device or torch.device("cpu")
    common = dict(
        batch_size=batch_size,
        device=device,
        input_size=input_size,
        workers=workers,
        amp=amp,
        features=features,
        normalize=normalize,
    )
    splits = {}
    xs, ys = [], []
    for v in range(views):
        desc = f"train features (view {v + 1}/{views})" if progress else None
        xs.append(
            split_features(model, ds.train, augment_seed=None if v == 0 else seed * 1000 + v, desc=desc, **common)
        )
        ys.append(ds.train.labels)
    splits["train"] = (np.concatenate(xs), np.concatenate(ys))
    for name in ("val", "test"):
        split = getattr(ds, name)
        if split is not None and len(split):
            feats = split_features(model, split, desc=f"{name} features" if progress else None, **common)
            if tta_flip:  # average with the flipped image: equal to averaging a linear classifier's logits
                feats = 0.5 * (feats + split_features(model, split, flip=True, **common))
            splits[name] = (feats, split.labels)
    fc = classifier if classifier is not None else getattr(model, "get_classifier", lambda: None)()
    init_weight = init_bias = None
    if fc is not None and tuple(fc.weight.shape) == (ds.num_classes, splits["train"][0].shape[1]):
        init_weight = fc.weight.detach().float().cpu().numpy()
        init_bias = np.zeros(ds.num_classes, np.float32) if fc.bias is None else fc.bias.detach().float().cpu().numpy()
    small = ds.train.images is not None
    stored = list(ds.train.images.shape[1:3]) if small else None
    default_norm = "cifar" if small else "imagenet"
    return FeatureSet(
        splits=splits,
        classes=list(ds.classes),
        init_weight=init_weight,
        init_bias=init_bias,
        meta={
            "views": views,
            "train_images": len(ds.train),
            "tta_flip": tta_flip,
            "input": {
                "size": input_size if input_size else (stored[0] if small else 224),
                "stored_size": stored,
                "resized": bool(small and input_size and [input_size, input_size] != stored),
                "mean": list(normalize[0]) if normalize else default_norm,
                "std": list(normalize[1]) if normalize else default_norm,
            },
            "precision": choose_precision(amp, device).to_dict(),
        },
    )
