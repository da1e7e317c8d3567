"""Which stage-1 checkpoint should stage 2 start from: the epoch of the best validation score
(``best.pt``, what ``lort run`` uses) or the last epoch (``last.pt``)? Measured on a
development split of training images the backbone never saw: the test split is never read.

    python benchmarks/stage1_checkpoint_rule.py --out DIR RUN [RUN ...]

Each RUN is a finished CIFAR run folder holding ``stage1/best.pt`` and ``stage1/last.pt``.
Its dataset is rebuilt from the saved data config, so the images stage 1 trained and
validated on are known; from each class's other training images ``--dev-per-class`` are
drawn (seeded) as the development split. A class with fewer unseen images than that is
left out of the development split and named (on CIFAR-10-LT the head class trains on
nearly all its images); its images still count as a class the classifiers can predict.

For each checkpoint the features of the long-tailed train split, the validation split and
the development split are extracted, and ``lort compare`` runs on them with its defaults
(``--methods``, ``--seeds``; the development split in the place of the test split, so its "test" figures are
development accuracy). Both checkpoints' validation scores reuse the validation split
that chose ``best.pt``, which favours ``best.pt``; the development split does not.
Writes ``DIR/<run>/<best|last>.npz``, the two leaderboards, ``DIR/summary.json`` and
``DIR/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import cifar_checkpoint_data, default_root, read_run_json, run_main

CHECKPOINTS = ("best", "last")


def dev_indices(labels: np.ndarray, unseen: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``per_class`` seeded images of ``unseen`` (indices into ``labels``) from each class that has
    that many, and the classes left out."""
    rng = np.random.default_rng(seed)
    picked, left_out = [], []
    for c in range(int(labels.max()) + 1):
        pool = unseen[labels[unseen] == c]
        if len(pool) < per_class:
            left_out.append(c)
            continue
        picked.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    if not picked:
        from lort.errors import LortError

        raise LortError(f"no class has {per_class} unseen training images; lower --dev-per-class")
    return np.concatenate(picked), left_out


def stage1_dev_accuracy(fs, split: str = "test") -> float:
    """Balanced accuracy of the stage-1 classifier (the feature set's ``init_weight``)."""
    x, y = fs.splits[split]
    pred = np.argmax(x @ fs.init_weight.T + fs.init_bias, axis=1)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]) * 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished CIFAR run folders with stage1/best.pt and stage1/last.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dev-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="seed of the development split")
    ap.add_argument("--root", default=default_root(), help="data folder (default: LORT_DATA or ../shared/data)")
    ap.add_argument("--methods", default="all", help="lort compare's --methods")
    ap.add_argument("--seeds", type=int, default=3, help="lort compare's --seeds")
    args = ap.parse_args()

    import torch

    from lort.data.features import FeatureSet
    from lort.errors import LortError
    from lort.runtime.checkpoint import load_model
    from lort.stage2.extract import split_features

    out = Path(args.out)
    rows = []
    for run in map(Path, args.runs):
        paths = {name: run / "stage1" / f"{name}.pt" for name in CHECKPOINTS}
        for p in paths.values():
            if not p.is_file():
                raise LortError(f"{p}: missing; the study needs both best.pt and last.pt of a finished run")
        summary = read_run_json(run / "stage1" / "summary.json")
        recorded = None
        row = {"run": str(run), "best_epoch": summary.get("selected_epoch"), "checkpoints": {}}
        for name, path in paths.items():
            model, ckpt = load_model(path)
            if recorded is None:
                recorded = dict(ckpt["config"]["data"])
                raw, ds, unseen = cifar_checkpoint_data(path, ckpt, args.root)
                raw_train = raw.splits["train"]
                dev, left_out = dev_indices(raw_train.labels, unseen, args.dev_per_class, args.seed)
                dev_split = raw_train.subset(dev)
                row["dev_images"] = len(dev)
                row["dev_classes_left_out"] = [ds.classes[c] for c in left_out]
            elif dict(ckpt["config"]["data"]) != recorded:
                raise LortError(f"{path}: its data config differs from best.pt's")
            model = model.eval().to(memory_format=torch.channels_last)
            cpu = torch.device("cpu")
            splits = {
                "train": (split_features(model, ds.train, device=cpu), ds.train.labels),
                "val": (split_features(model, ds.val, device=cpu), ds.val.labels),
                "test": (split_features(model, dev_split, device=cpu), dev_split.labels),
            }
            fc = model.get_classifier()
            fs = FeatureSet(
                splits,
                list(ds.classes),
                init_weight=fc.weight.detach().float().numpy(),
                init_bias=fc.bias.detach().float().numpy(),
                meta={"checkpoint": str(path), "test_split": "development: unseen training images, not the test set"},
            )
            feats = out / run.name / f"{name}.npz"
            feats.parent.mkdir(parents=True, exist_ok=True)
            fs.save(feats)
            board = out / run.name / f"compare_{name}"
            cmd = [sys.executable, "-m", "lort", "compare", "--features", str(feats), "--out", str(board),
                   "--methods", args.methods, "--seeds", str(args.seeds)]  # fmt: skip
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            lb = {r["method"]: r for r in json.loads((board / "leaderboard.json").read_text())["results"]}
            pick = next(m for m, r in lb.items() if r["tier"] == "reference")
            row["checkpoints"][name] = {
                "epoch": ckpt.get("epoch"),
                "stage1_val": stage1_dev_accuracy(fs, "val"),
                "stage1_dev": stage1_dev_accuracy(fs, "test"),
                "pick": pick,
                "pick_val": lb[pick]["val_acc"],
                "pick_dev": lb[pick]["test_acc"],
                "methods": {m: {"val": r["val_acc"], "dev": r["test_acc"]} for m, r in lb.items()},
            }
        rows.append(row)
    lines = [
        "# Stage-1 checkpoint for stage 2: best validation epoch or last epoch",
        "",
        f"Made by `python benchmarks/stage1_checkpoint_rule.py {' '.join(sys.argv[1:])}`. Development split: "
        f"{args.dev_per_class} unseen training images a class (seed {args.seed}), in % balanced accuracy over its "
        "classes; validation: the 200-image split that chose best.pt (so it favours best.pt). The test split is not read.",
        "",
        "| run | best epoch | checkpoint | stage 1 val | stage 1 dev | validation's pick | its val | its dev "
        "| methods' dev, median | methods higher on dev than the other checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b, last = row["checkpoints"]["best"], row["checkpoints"]["last"]
        for name, c, other in (("best", b, last), ("last", last, b)):
            devs = [v["dev"] for v in c["methods"].values()]
            higher = sum(v["dev"] > other["methods"][m]["dev"] for m, v in c["methods"].items())
            lines.append(
                f"| {Path(row['run']).name} | {row['best_epoch']} | {name} (epoch {c['epoch']}) | {c['stage1_val']:.2f} "
                f"| {c['stage1_dev']:.2f} | {c['pick']} | {c['pick_val']:.2f} | {c['pick_dev']:.2f} "
                f"| {statistics.median(devs):.2f} | {higher} of {len(devs)} |"
            )
    left = sorted({c for row in rows for c in row["dev_classes_left_out"]})
    if left:
        lines += ["", f"Left out of the development split (too few unseen training images): {', '.join(left)}."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
