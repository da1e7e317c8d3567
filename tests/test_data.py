from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from lort.cli import main
from lort.data import (
    DataConfig,
    build_dataset,
    class_counts,
    class_groups,
    make_long_tailed,
    read_cifar,
    read_image_folder,
    read_list_dataset,
)
from lort.data.augment import BatchAugment, iterate_batches
from lort.errors import LortError

from .conftest import SHARED_CIFAR10, make_cifar_archive, make_image_tree

# ----------------------------------------------------------------------------- profiles


def test_cifar100_lt_ir100_profile_matches_the_standard_counts():
    counts = class_counts("exp", 500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5
    assert sum(counts) == 10847
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


@pytest.mark.parametrize(("ir", "total"), [(100, 12406), (50, 13996), (10, 20431)])
def test_cifar10_lt_profiles(ir, total):
    counts = class_counts("exp", 5000, 10, ir)
    assert counts[0] == 5000 and counts[-1] == 5000 // ir
    assert sum(counts) == total


def test_step_profile_and_balanced_ratio():
    assert class_counts("step", 500, 10, 10) == [500] * 5 + [50] * 5
    assert class_counts("exp", 100, 5, 1) == [100] * 5


@pytest.mark.parametrize("ir", [0.5, 0, -3, float("nan")])
def test_imbalance_ratio_below_one_is_rejected(ir):
    with pytest.raises(LortError, match="imbalance ratio"):
        class_counts("exp", 500, 10, ir)


def test_ratio_that_empties_a_class_is_rejected():
    with pytest.raises(LortError, match="zero images"):
        class_counts("exp", 50, 10, 100)


def test_groups_thresholds():
    assert class_groups(np.array([101, 100, 20, 19, 0])).tolist() == [0, 1, 1, 2, 2]


# ----------------------------------------------------------------------------- CIFAR archives


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_archive_reader_pairs_images_with_labels(tmp_path, name):
    make_cifar_archive(tmp_path, name, per_class_train=12, per_class_test=3)
    raw = read_cifar(name, tmp_path)
    k = 10 if name == "cifar10" else 100
    assert raw.num_classes == k
    tr = raw.splits["train"]
    assert tr.images.shape == (12 * k, 32, 32, 3) and tr.images.dtype == np.uint8
    assert np.array_equal(tr.images[:, 0, 0, 0], tr.labels)  # pixel (0,0,R) encodes the label
    assert len(raw.splits["test"]) == 3 * k
    # second read comes from the memory-mapped cache
    again = read_cifar(name, tmp_path)
    assert isinstance(again.splits["train"].images, np.memmap)
    assert np.array_equal(again.splits["train"].images, tr.images)


def test_extracted_cifar_folder_is_read(tmp_path):
    archive = make_cifar_archive(tmp_path, "cifar100", 6, 2)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    archive.unlink()
    raw = read_cifar("cifar100", tmp_path / "x")
    assert len(raw.splits["train"]) == 600 and raw.classes[3] == "f03"


def test_cifar100_lt_from_generated_archive_gives_the_standard_profile(tmp_path):
    make_cifar_archive(tmp_path, "cifar100", per_class_train=520, per_class_test=1)
    ds = build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), max_per_class=500))
    counts = ds.train_counts
    assert counts[0] == 500 and counts[-1] == 5 and counts.sum() == 10847
    assert ds.val is not None and (ds.val.counts(100) == 20).all()
    assert not set(ds.train.source_index) & set(ds.val.source_index)


def test_truncated_archive_is_a_clear_error(tmp_path, capsys):
    archive = make_cifar_archive(tmp_path, "cifar10", 5, 1)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    assert main(["data", "info", "--dataset", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cifar-10-python.tar.gz" in err and "truncated" in err


def test_failed_checksum_is_a_clear_error(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 5, 1)
    with pytest.raises(LortError, match="md5 .* does not match"):
        read_cifar("cifar10", tmp_path, download_ok=True)


def test_missing_archive_without_network_names_the_folder(tmp_path):
    with pytest.raises(LortError, match="found neither cifar-100-python.tar.gz"):
        read_cifar("cifar100", tmp_path)


def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORT_CACHE", str(cache))
    make_cifar_archive(tmp_path, "cifar10", 4, 1)
    first = read_cifar("cifar10", tmp_path).splits["train"].images.copy()
    (npy,) = cache.glob("*/train_images.npy")
    raw_bytes = bytearray(npy.read_bytes())
    raw_bytes[-1] ^= 0xFF
    npy.write_bytes(bytes(raw_bytes))
    again = read_cifar("cifar10", tmp_path).splits["train"].images
    assert np.array_equal(again, first)


# ----------------------------------------------------------------------------- long tail and splits


def _raw(tmp_path, per_class=60):
    make_cifar_archive(tmp_path, "cifar10", per_class, 2)
    return read_cifar("cifar10", tmp_path)


def test_first_selection_takes_file_order_and_val_is_disjoint(tmp_path):
    raw = _raw(tmp_path)
    ds = make_long_tailed(raw, imbalance_ratio=10, max_per_class=40, val_per_class=5)
    tr_lab = raw.splits["train"].labels
    for c in range(10):
        idx = ds.train.source_index[ds.train.labels == c]
        assert np.array_equal(idx, np.flatnonzero(tr_lab == c)[: len(idx)])
    assert ds.train_counts.tolist() == class_counts("exp", 40, 10, 10)
    assert (ds.val.counts(10) == 5).all()
    assert not set(ds.train.source_index) & set(ds.val.source_index)


def test_random_selection_is_seeded_and_recorded(tmp_path):
    raw = _raw(tmp_path)
    a = make_long_tailed(raw, 10, max_per_class=40, selection="random", seed=3)
    b = make_long_tailed(raw, 10, max_per_class=40, selection="random", seed=3)
    c = make_long_tailed(raw, 10, max_per_class=40, selection="random", seed=4)
    assert np.array_equal(a.train.source_index, b.train.source_index)
    assert np.array_equal(a.val.source_index, b.val.source_index)
    assert not np.array_equal(a.train.source_index, c.train.source_index)
    assert a.info["selection"] == "random" and a.info["seed"] == 3


def test_head_class_without_spare_images_is_reported(tmp_path):
    ds = make_long_tailed(_raw(tmp_path, 30), 10, val_per_class=5)
    assert ds.info["val_shortfall"] == ["c0"]
    assert ds.val.counts(10)[0] == 0 and (ds.val.counts(10)[1:] == 5).all()


def test_profile_asking_for_more_than_available_is_rejected(tmp_path):
    with pytest.raises(LortError, match="has 30 training images"):
        make_long_tailed(_raw(tmp_path, 30), 10, max_per_class=31)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_tree_and_tar_gz_read_identically(tmp_path):
    root = make_image_tree(tmp_path / "tree", {"b": (5, 2), "a": (7, 3), "c": (2, 1)})
    raw = read_image_folder(root)
    assert raw.classes == ["a", "b", "c"]
    tr = raw.splits["train"]
    assert tr.counts(3).tolist() == [7, 5, 2]
    assert np.array_equal(tr.images[:, 0, 0, 0], tr.labels)
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="tree")
    raw2 = read_image_folder(archive)
    assert np.array_equal(raw2.splits["train"].images, tr.images)
    assert np.array_equal(raw2.splits["test"].labels, raw.splits["test"].labels)


def test_unreadable_image_names_the_file(tmp_path):
    root = make_image_tree(tmp_path / "tree", {"a": (3, 1), "b": (3, 1)})
    (root / "train" / "b" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(LortError, match=r"train/b/0001.png: unreadable image"):
        read_image_folder(root)


def test_large_images_are_streamed_by_path(tmp_path):
    root = make_image_tree(tmp_path / "big", {"a": (2, 1), "b": (2, 1)}, size=80)
    raw = read_image_folder(root)
    assert raw.splits["train"].images is None and len(raw.splits["train"].paths) == 4


# ----------------------------------------------------------------------------- list files


def _list_tree(tmp_path):
    root = tmp_path / "imgs"
    make_image_tree(root, {"x": (2, 1), "y": (1, 1)}, size=16, fmt="JPEG")
    spaced = root / "train" / "with space"
    spaced.mkdir()
    (root / "train" / "x" / "0000.jpg").rename(spaced / "a b.jpg")
    (tmp_path / "train.txt").write_text("train/with space/a b.jpg 0\ntrain/x/0001.jpg 0\n\ntrain/y/0000.jpg 1\n")
    (tmp_path / "test.txt").write_text("test/x/0000.jpg 0\ntest/y/0000.jpg 1\n")
    return root


def test_list_files_with_spaces_in_paths(tmp_path):
    root = _list_tree(tmp_path)
    raw = read_list_dataset(
        "mine",
        root,
        lists={"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")},
    )
    assert raw.num_classes == 2 and raw.long_tailed
    assert raw.splits["train"].paths[0].endswith("with space/a b.jpg")
    ds = make_long_tailed(raw, val_per_class=0)
    assert ds.train_counts.tolist() == [2, 1] and ds.val is None
    # without a validation list a balanced one is held out of training, never more than half a class
    held = make_long_tailed(raw)
    assert held.train_counts.tolist() == [1, 1] and held.val.counts(2).tolist() == [1, 0]
    assert "held out" in held.summary()["val_source"]
    assert not set(held.val.source_index) & set(held.train.source_index)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("train/x/0001.jpg", r"train.txt:2: expected 'relative/path label'"),
        ("train/x/0001.jpg one", r"train.txt:2: label 'one' is not an integer"),
        ("train/x/0001.jpg 7", r"train.txt:2: label 7 outside \[0, 2\)"),
        ("train/x/missing.jpg 0", r"train.txt:2: image .*missing.jpg does not exist"),
    ],
)
def test_bad_list_lines_name_file_and_line(tmp_path, line, message):
    root = _list_tree(tmp_path)
    (tmp_path / "train.txt").write_text(f"train/x/0001.jpg 0\n{line}\n")
    with pytest.raises(LortError, match=message):
        read_list_dataset(
            "mine",
            root,
            lists={"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")},
            num_classes=2,
        )


# ----------------------------------------------------------------------------- augmentation


def test_batch_augment_crops_flips_and_normalises_like_a_reference():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    aug = BatchAugment(pad=2, flip=True, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
    out = aug(imgs, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    # replay the same random draws with per-sample reference code
    oy = torch.randint(0, 5, (6, 1), generator=gen)
    ox = torch.randint(0, 5, (6, 1), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = torch.nn.functional.pad(imgs.permute(0, 3, 1, 2), (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop.float())


def test_iterate_batches_covers_every_sample_once():
    imgs = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    labels = np.arange(10)
    seen = [y for _, y in iterate_batches(imgs, labels, 3, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


# ----------------------------------------------------------------------------- CLI on real data


def test_data_info_on_shared_cifar10(shared_cifar10_cache, monkeypatch, capsys):
    monkeypatch.setenv("LORT_CACHE", str(shared_cifar10_cache))
    code = main(
        [
            "data",
            "info",
            "--dataset",
            "cifar10",
            "--root",
            str(SHARED_CIFAR10.parent),
            "--imbalance-ratio",
            "100",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "12406 images" in out
    assert "airplane      5000" in out and "truck           50" in out
    assert "test         10000 images" in out


def test_data_plot_writes_a_png(tmp_path, capsys):
    make_cifar_archive(tmp_path, "cifar10", 30, 1)
    out = tmp_path / "counts.png"
    assert main(["data", "plot", "--root", str(tmp_path), "--imbalance-ratio", "10", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


def test_profile_none_keeps_the_source_distribution_minus_validation(tmp_path):
    """Validation takes at most half of a class: a tail class of 8 keeps 4 training images, not 3
    (and a class of 20, not 1 of its 20)."""
    root = make_image_tree(tmp_path / "tree", {"a": (30, 1), "b": (8, 1), "c": (2, 1), "d": (1, 1)})
    ds = make_long_tailed(read_image_folder(root), profile="none", val_per_class=5)
    assert ds.train_counts.tolist() == [25, 4, 1, 1]
    assert ds.val.counts(4).tolist() == [5, 4, 1, 0]
    assert not set(ds.train.source_index) & set(ds.val.source_index)
    assert ds.info["val_shortfall"] == ["b", "c", "d"] and "never more than half" in ds.info["val_source"]
    line = ds.describe()
    assert "train 31 images (25 to 1 a class, the source's own class distribution)" in line
    assert "validation 10" in line and "fewer than 5 for b, c, d" in line


def test_an_image_folder_with_its_own_val_split_validates_on_it(tmp_path):
    """A user's val/ folder is the validation split whatever the profile; no training image is
    held out for validation then."""
    root = make_image_tree(tmp_path / "tree", {"a": (30, 1), "b": (8, 1)})
    for cls, n in (("a", 3), ("b", 2)):
        (root / "val" / cls).mkdir(parents=True)
        for f in sorted((root / "test" / cls).iterdir())[:1]:
            for i in range(n):
                (root / "val" / cls / f"{i}.png").write_bytes(f.read_bytes())
    raw = read_image_folder(root)
    none = make_long_tailed(raw, profile="none", val_per_class=5)
    assert none.train_counts.tolist() == [30, 8] and none.val.counts(2).tolist() == [3, 2]
    assert none.info["val_source"] == "the source's own val/ split" and none.info["val_shortfall"] == []
    exp = make_long_tailed(raw, imbalance_ratio=5, max_per_class=20, val_per_class=5)
    assert exp.train_counts.tolist() == [20, 4] and exp.val.counts(2).tolist() == [3, 2]
    line = exp.describe()
    assert "profile exp, imbalance ratio 5: 14 of the folder's 38 training images left out, --profile none" in line


def test_a_subsampled_benchmark_is_described_without_the_user_folder_hint(tmp_path):
    ds = make_long_tailed(_raw(tmp_path), imbalance_ratio=10, max_per_class=50, val_per_class=2)
    line = ds.describe()
    assert line.startswith("data: cifar10, ") and "profile exp, imbalance ratio 10)" in line
    assert "--profile none" not in line


def test_a_profile_that_asks_for_more_images_than_a_folder_has_names_the_folder_and_profile_none(tmp_path):
    root = make_image_tree(tmp_path / "tree", {"a": (30, 1), "b": (2, 1)})
    with pytest.raises(LortError, match=r"tree: class 'b' has 2 training images, .* profile none"):
        make_long_tailed(read_image_folder(root), imbalance_ratio=2)


def test_dataset_summary_records_the_measured_imbalance_ratio(tmp_path):
    raw = _raw(tmp_path)
    ds = make_long_tailed(raw, imbalance_ratio=10, max_per_class=50, val_per_class=2)
    s = ds.summary()
    counts = s["train_counts"]
    assert s["imbalance_ratio"] == round(max(counts) / min(counts), 2) and s["imbalance_ratio_requested"] == 10.0
    none = make_long_tailed(raw, profile="none", val_per_class=2).summary()
    assert none["imbalance_ratio"] == 1.0 and none["imbalance_ratio_requested"] is None  # CIFAR is balanced


def test_lort_train_takes_profile_none_and_says_what_the_data_holds(tmp_path, capsys):
    """--profile is a shortcut of lort train/run/tune; the run's log opens with the data line."""
    import json

    root = make_image_tree(tmp_path / "tree", {"a": (24, 2), "b": (6, 2)})
    code = main(["train", "--dataset", "imagefolder", "--root", str(root), "--profile", "none", "--epochs", "1",
                 "--batch-size", "8", "--set", "stage1.eval_batch_size=16", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert summary["profile"] == "none" and summary["train_counts"] == [12, 3]  # half of each class validates
    assert "data: tree, 2 classes; train 15 images (12 to 3 a class, the source's own class distribution)" in (
        capsys.readouterr().out
    )


def test_a_checkpoint_whose_data_changed_is_neither_extracted_nor_resumed(tmp_path, capsys):
    """Images added to a folder after stage 1: the features would not be those it learned from,
    and a resumed run would train on other data; both stop with one line naming the checkpoint."""
    root = make_image_tree(tmp_path / "tree", {"a": (24, 2), "b": (6, 2)})
    train = ["train", "--dataset", "imagefolder", "--root", str(root), "--profile", "none", "--batch-size", "8",
             "--set", "stage1.eval_batch_size=16", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(train + ["--epochs", "1"]) == 0  # --epochs 1 in both calls: resume checks the config first
    make_image_tree(tmp_path / "more", {"b": (4, 0)})
    for f in sorted((tmp_path / "more" / "train" / "b").iterdir()):
        f.rename(root / "train" / "b" / f"new_{f.name}")
    capsys.readouterr()
    assert main(["extract", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "last.pt: stage 1 trained on 15 images (12 to 3 a class), its data config now gives 17" in err
    assert "these would not be the features it learned from" in err
    assert not (tmp_path / "f.npz").exists()
    (tmp_path / "run" / "summary.json").unlink()  # as if killed before its summary was written
    assert main(train + ["--epochs", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: stage 1 trained on 15 images (12 to 3 a class), its data config now gives 17" in err
    assert "the data changed, so it cannot resume; choose another --out" in err
