"""Shared fixtures: generated archives and trees in the official formats, the shared data."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("LORT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SHARED_CIFAR10 = SHARED_DATA / "cifar10-jpg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder unless it shares the session one."""
    monkeypatch.setenv("LORT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def shared_cifar10_cache(tmp_path_factory):
    """One decoded cache of the shared CIFAR-10 tree for the whole session (decoded once)."""
    if not SHARED_CIFAR10.is_file():
        pytest.skip(f"shared CIFAR-10 data not found at {SHARED_CIFAR10}")
    return tmp_path_factory.mktemp("shared-cache")


def _batch(images: np.ndarray, labels: list[int], labels_key: bytes) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"data": data, labels_key: labels, b"batch_label": b"generated"})


def make_cifar_archive(folder: Path, name: str, per_class_train: int, per_class_test: int, seed: int = 0) -> Path:
    """A small archive in the exact official python format (cifar-10 or cifar-100), written
    into ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100

    def split(n_per_class):
        labels = np.repeat(np.arange(k), n_per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        # encode the label in pixel (0, 0, 0) so tests can check image/label pairing
        images[:, 0, 0, 0] = labels
        return images, labels.tolist()

    members: dict[str, bytes] = {}
    if name == "cifar10":
        top = "cifar-10-batches-py"
        tr_img, tr_lab = split(per_class_train)
        chunks = np.array_split(np.arange(len(tr_lab)), 5)
        for i, idx in enumerate(chunks, start=1):
            members[f"{top}/data_batch_{i}"] = _batch(tr_img[idx], [tr_lab[j] for j in idx], b"labels")
        te_img, te_lab = split(per_class_test)
        members[f"{top}/test_batch"] = _batch(te_img, te_lab, b"labels")
        members[f"{top}/batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(k)]})
        archive = folder / "cifar-10-python.tar.gz"
    else:
        top = "cifar-100-python"
        tr_img, tr_lab = split(per_class_train)
        members[f"{top}/train"] = _batch(tr_img, tr_lab, b"fine_labels")
        te_img, te_lab = split(per_class_test)
        members[f"{top}/test"] = _batch(te_img, te_lab, b"fine_labels")
        members[f"{top}/meta"] = pickle.dumps({b"fine_label_names": [f"f{i:02d}".encode() for i in range(k)]})
        archive = folder / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def make_image_tree(root: Path, counts: dict[str, tuple[int, int]], size: int = 32, fmt: str = "PNG") -> Path:
    """``root/{train,test}/<class>/NNNN.png`` with the class index in pixel (0, 0, 0)."""
    rng = np.random.default_rng(1)
    for ci, (cls, (n_train, n_test)) in enumerate(sorted(counts.items())):
        for split, n in (("train", n_train), ("test", n_test)):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                arr[0, 0, 0] = ci
                suffix = {"JPEG": "jpg"}.get(fmt, fmt.lower())
                Image.fromarray(arr).save(d / f"{i:04d}.{suffix}", format=fmt)
    return root


@pytest.fixture(scope="session")
def short_cifar10_lt_run(shared_cifar10_cache, tmp_path_factory):
    """A short real stage-1 run on CIFAR-10-LT (IR 100, n_max 1000, 5 epochs) and its features.

    n_max 1000 keeps the run short and gives the profile Few classes (< 20 images)."""
    import os

    from lort.config import load_config
    from lort.stage1.train import train
    from lort.stage2.workflow import features_from_checkpoint

    old = os.environ.get("LORT_CACHE")
    os.environ["LORT_CACHE"] = str(shared_cifar10_cache)
    try:
        cfg = load_config(None, {
            "data.root": str(SHARED_CIFAR10.parent), "data.imbalance_ratio": 100, "data.max_per_class": 1000,
            "stage1.epochs": 5, "stage1.lr": 0.02, "stage1.weight_decay": 5e-4,
        })  # fmt: skip
        out = tmp_path_factory.mktemp("short-run")
        summary = train(cfg, out)
        got = features_from_checkpoint(out / "best.pt")
        fs, ds = got.features, got.dataset
    finally:
        if old is None:
            os.environ.pop("LORT_CACHE", None)
        else:
            os.environ["LORT_CACHE"] = old
    return {"out": out, "summary": summary, "features": fs, "dataset": ds}
