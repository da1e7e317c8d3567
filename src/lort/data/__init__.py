"""Long-tailed datasets: profiles, readers, splits, groups, feature files, augmentation."""

from .config import DATASETS, DataConfig, build_dataset
from .features import FeatureSet, load_features
from .longtail import (
    FEW,
    GROUP_NAMES,
    MANY,
    MEDIUM,
    LongTailedDataset,
    class_groups,
    make_long_tailed,
)
from .profiles import class_counts
from .readers import read_cifar, read_image_folder, read_list_dataset, read_list_file
from .splits import RawDataset, Split

__all__ = [
    "DATASETS",
    "DataConfig",
    "FEW",
    "FeatureSet",
    "GROUP_NAMES",
    "LongTailedDataset",
    "MANY",
    "MEDIUM",
    "RawDataset",
    "Split",
    "build_dataset",
    "class_counts",
    "class_groups",
    "load_features",
    "make_long_tailed",
    "read_cifar",
    "read_image_folder",
    "read_list_dataset",
    "read_list_file",
]
