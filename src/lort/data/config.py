"""One data configuration for the command line, YAML presets and the library."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LortError
from . import longtail
from .longtail import LongTailedDataset, make_long_tailed
from .readers import (
    CIFAR,
    LIST_DATASETS,
    data_root,
    read_cifar,
    read_image_folder,
    read_list_dataset,
)

DATASETS = (*CIFAR, "imagefolder", *LIST_DATASETS)


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10, cifar100, imagefolder, imagenet_lt, inat2018, places_lt
    root: str | None = None  # default: the LORT_DATA environment variable
    imbalance_ratio: float = longtail.IMBALANCE_RATIO  # n_max / n_min of the long-tailed training split
    profile: str = longtail.PROFILE  # exp (the standard CIFAR-LT generator), step, or none (as given)
    max_per_class: int | None = None  # n_max (default: every image of the largest class)
    selection: str = longtail.SELECTION  # which images a class keeps: first (file order) or random (seeded)
    seed: int = longtail.SPLIT_SEED  # seed of the random selection and of the validation split
    val_per_class: int = longtail.VAL_PER_CLASS  # validation images per class, from training images the subset left
    download: bool = False  # fetch a missing official CIFAR archive (checksum verified)
    list_dir: str | None = None  # list datasets: folder of the list files (default: root)
    train_list: str | None = None  # a list file of your own: relative/path label per line
    val_list: str | None = None  # its validation list (default: held out of the training list)
    test_list: str | None = None  # its test list
    num_classes: int | None = None  # classes of a list dataset (default: the largest label + 1)


def build_dataset(cfg: DataConfig) -> LongTailedDataset:
    """Read the source named by ``cfg`` and build its long-tailed train/val/test splits."""
    if cfg.dataset in CIFAR:
        raw = read_cifar(cfg.dataset, cfg.root, download_ok=cfg.download)
    elif cfg.dataset == "imagefolder":
        raw = read_image_folder(data_root(cfg.root))
    elif cfg.dataset in LIST_DATASETS or cfg.train_list:
        lists = None
        if cfg.train_list:
            lists = {"train": cfg.train_list, "test": cfg.test_list or ""}
            if cfg.val_list:
                lists["val"] = cfg.val_list
        raw = read_list_dataset(cfg.dataset, data_root(cfg.root), cfg.list_dir, lists, cfg.num_classes)
    else:
        raise LortError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    return make_long_tailed(
        raw,
        imbalance_ratio=cfg.imbalance_ratio,
        profile=cfg.profile,
        max_per_class=cfg.max_per_class,
        selection=cfg.selection,
        seed=cfg.seed,
        val_per_class=cfg.val_per_class,
    )
