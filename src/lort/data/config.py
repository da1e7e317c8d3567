"""One data configuration for the command line, YAML presets and the library."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LortError
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
    dataset: str = "cifar10"
    root: str | None = None  # default: the LORT_DATA environment variable
    imbalance_ratio: float = 100.0
    profile: str = "exp"
    max_per_class: int | None = None
    selection: str = "first"
    seed: int = 0
    val_per_class: int = 20
    download: bool = False
    list_dir: str | None = None  # list datasets: folder of the list files (default: root)
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    num_classes: int | None = None


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
