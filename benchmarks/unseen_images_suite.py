"""Feature sets whose training images the backbone never saw: the case that selection by
cross-validation on the training split is for (a network trained on other images).

    python benchmarks/unseen_images_suite.py --checkpoint results/RUN/stage1/best.pt --out DIR \
        [--ratios 100 10] [--orders unseen-first backbone-first] [--max-per-class 4000]

The run's dataset is rebuilt from its saved data config, so the training and validation
images the backbone used are known. From each class's remaining training images (the
backbone neither trained nor validated on them) a new long-tailed training set is drawn,
with a balanced validation split of ``--val-per-class`` more unseen images a class and the
official test images of the kept classes as its test split. Classes left with fewer unseen
images than the tail and the validation split need are dropped (a CIFAR-10-LT backbone
trains on every image of its head class) and named in the file's ``meta_json``.

Orders: ``unseen-first`` makes the class with the most unseen images the head (the
backbone's tail becomes the new head), ``backbone-first`` keeps the backbone's own order.
The head's size is the largest the unseen images allow, at most ``--max-per-class``. The
stage-1 classifier is not kept (its classes and prior belong to the backbone's own task).
Writes ``DIR/<run>__<order>_ir<ratio>.npz`` for each order and ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import cifar_checkpoint_data, default_root, run_main


def plan_set(labels: np.ndarray, unseen: np.ndarray, order: str, ratio: float, val_per_class: int,
             max_per_class: int, seed: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``(kept classes head first, train idx, train labels, val idx, val labels)``; labels are
    the new classes' ranks (0 = head)."""
    from lort.data.profiles import class_counts
    from lort.errors import LortError

    k_all = int(labels.max()) + 1
    avail = np.array([np.sum(labels[unseen] == c) for c in range(k_all)])
    ranked = list(np.argsort(-avail, kind="stable")) if order == "unseen-first" else list(range(k_all))
    kept = ranked
    while len(kept) > 1:
        factor = (1.0 / ratio) ** (np.arange(len(kept)) / (len(kept) - 1.0))
        room = [(avail[c] - val_per_class) / f for c, f in zip(kept, factor, strict=True)]
        n_max = int(min(min(room), max_per_class))
        if n_max >= ratio:  # the tail keeps at least one image
            break
        kept = [c for c in kept if c != min(kept, key=lambda c: avail[c])]  # drop the scarcest class
    else:
        raise LortError(f"too few unseen images for an imbalance ratio of {ratio}")
    counts = class_counts("exp", n_max, len(kept), ratio)
    rng = np.random.default_rng(seed)
    tr, trl, va, val = [], [], [], []
    for rank, (c, n) in enumerate(zip(kept, counts, strict=True)):
        idx = unseen[labels[unseen] == c]  # file order, as selection 'first'
        tr.append(idx[:n])
        trl.append(np.full(n, rank))
        v = np.sort(rng.choice(idx[n:], size=val_per_class, replace=False))
        va.append(v)
        val.append(np.full(len(v), rank))
    return [int(c) for c in kept], *(np.concatenate(a) for a in (tr, trl, va, val))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a lort stage-1 checkpoint (RUN/stage1/best.pt)")
    ap.add_argument("--out", required=True, help="folder the .npz files are written to")
    ap.add_argument("--ratios", type=float, nargs="+", default=[100.0, 10.0])
    ap.add_argument("--orders", nargs="+", default=["unseen-first", "backbone-first"],
                    choices=["unseen-first", "backbone-first"])  # fmt: skip
    ap.add_argument("--max-per-class", type=int, default=4000)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=default_root(), help="data folder (default: LORT_DATA or ../shared/data)")
    args = ap.parse_args()

    import torch

    from lort.data.features import FeatureSet
    from lort.data.splits import Split
    from lort.runtime.checkpoint import load_model
    from lort.stage2.extract import split_features

    model, ckpt = load_model(args.checkpoint)
    raw, ds, unseen = cifar_checkpoint_data(args.checkpoint, ckpt, args.root)
    src_train, src_test = raw.splits["train"], raw.splits["test"]
    model = model.eval().to(memory_format=torch.channels_last)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, np.ndarray] = {}

    def feats(split: Split, idx: np.ndarray, key: str) -> np.ndarray:
        if key not in cache:  # every unseen image once, the test split once
            cache[key] = split_features(model, split.subset(idx), device=torch.device("cpu"), desc=key)
        return cache[key]

    unseen_x = feats(src_train, unseen, "unseen")
    test_x = feats(src_test, np.arange(len(src_test)), "test")
    pos = {int(i): p for p, i in enumerate(unseen)}
    run = Path(args.checkpoint).resolve().parent.parent.name
    for order in args.orders:
        for ratio in args.ratios:
            kept, tr, trl, va, val = plan_set(
                src_train.labels, unseen, order, ratio, args.val_per_class, args.max_per_class, args.seed
            )
            remap = {c: r for r, c in enumerate(kept)}
            test_keep = np.flatnonzero(np.isin(src_test.labels, kept))
            splits = {
                "train": (unseen_x[[pos[int(i)] for i in tr]], trl),
                "val": (unseen_x[[pos[int(i)] for i in va]], val),
                "test": (test_x[test_keep], np.array([remap[int(c)] for c in src_test.labels[test_keep]])),
            }
            counts = np.bincount(trl).tolist()
            meta = {
                "backbone_checkpoint": str(args.checkpoint),
                "images": "training images the backbone never saw (neither trained nor validated on)",
                "order": order,
                "imbalance_ratio": ratio,
                "classes_kept": [raw.classes[c] for c in kept],
                "classes_dropped": [raw.classes[c] for c in range(raw.num_classes) if c not in kept],
                "train_counts": counts,
                "command": "python benchmarks/unseen_images_suite.py " + " ".join(__import__("sys").argv[1:]),
            }
            fs = FeatureSet(splits, [raw.classes[c] for c in kept], meta=meta)
            name = out / f"{run}__{order}_ir{ratio:g}.npz"
            fs.save(name)
            print(f"{name}: {len(kept)} classes, train {counts}, val {len(val)}, test {len(test_keep)}", flush=True)


if __name__ == "__main__":
    run_main(main)
