"""The ``lort`` command line: parse, build a config, call the library. Bad input -> exit 2."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import LortError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", default="cifar10", choices=DATASETS, help="dataset (default cifar10)"
    )
    g.add_argument("--root", help="data folder (default: $LORT_DATA)")
    g.add_argument(
        "--imbalance-ratio", type=float, default=100.0, help="n_max / n_min (default 100)"
    )
    g.add_argument(
        "--profile", default="exp", choices=("exp", "step", "none"), help="imbalance profile"
    )
    g.add_argument(
        "--max-per-class", type=int, help="n_max (default: all images of the largest class)"
    )
    g.add_argument(
        "--selection",
        default="first",
        choices=("first", "random"),
        help="which images a class keeps",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of random selection and the validation split"
    )
    g.add_argument(
        "--val-per-class", type=int, default=20, help="validation images per class (default 20)"
    )
    g.add_argument(
        "--download", action="store_true", help="download official CIFAR archives when missing"
    )
    g.add_argument("--list-dir", help="folder holding the list files (list datasets)")
    g.add_argument("--train-list", help="train list file (relative/path label per line)")
    g.add_argument("--val-list", help="validation list file")
    g.add_argument("--test-list", help="test list file")
    g.add_argument("--num-classes", type=int, help="number of classes (list datasets)")


def _data_config(args: argparse.Namespace):
    from .data import DataConfig

    return DataConfig(
        dataset=args.dataset,
        root=args.root,
        imbalance_ratio=args.imbalance_ratio,
        profile=args.profile,
        max_per_class=args.max_per_class,
        selection=args.selection,
        seed=args.seed,
        val_per_class=args.val_per_class,
        download=args.download,
        list_dir=args.list_dir,
        train_list=args.train_list,
        val_list=args.val_list,
        test_list=args.test_list,
        num_classes=args.num_classes,
    )


def cmd_data_info(args: argparse.Namespace) -> int:
    from .data import GROUP_NAMES, build_dataset

    ds = build_dataset(_data_config(args))
    s = ds.summary()
    counts = s["train_counts"]
    print(f"dataset      {s['dataset']}  ({s['source']})")
    print(f"classes      {s['num_classes']}")
    if "profile" in s and s["profile"] != "given":
        print(
            f"profile      {s['profile']}, imbalance ratio {s['imbalance_ratio']:g}, "
            f"n_max {s['max_per_class']}, selection {s['selection']}, seed {s['seed']}"
        )
    print(f"train        {s['train_size']} images; per class (head first):")
    width = max(len(c) for c in ds.classes)
    groups = ds.groups
    for name, n, g in zip(ds.classes, counts, groups, strict=True):
        print(f"  {name:<{width}}  {n:>6}  {GROUP_NAMES[g]}")
    print("groups       " + ", ".join(f"{k} {v}" for k, v in s["groups"].items()))
    print(f"validation   {s['val_size']} images (held out from unused training images)")
    if s.get("val_shortfall"):
        print(
            f"             fewer than {s['val_per_class']} spare images, so fewer validation images, "
            f"for: {', '.join(s['val_shortfall'])}"
        )
    print(f"test         {s['test_size']} images")
    return 0


def cmd_data_plot(args: argparse.Namespace) -> int:
    from .analysis.plots import plot_class_counts
    from .data import build_dataset

    ds = build_dataset(_data_config(args))
    path = plot_class_counts(ds.train_counts, ds.classes, args.out, title=f"{ds.name} train")
    print(path)
    return 0


# Convenience flags of `lort train` and `lort run`: each is a shortcut for --set KEY=VALUE.
SHORTCUTS = {
    "model": "stage1.model",
    "epochs": "stage1.epochs",
    "lr": "stage1.lr",
    "weight_decay": "stage1.weight_decay",
    "batch_size": "stage1.batch_size",
    "seed": "stage1.seed",
    "dataset": "data.dataset",
    "root": "data.root",
    "imbalance_ratio": "data.imbalance_ratio",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (sections data, stage1, stage2); see configs/")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.lr=0.05 (repeatable)",
    )
    g = p.add_argument_group("shortcuts for --set")
    g.add_argument(
        "--model", help="stage1.model (resnet32, resnet34_cifar, resnet50, resnext50_32x4d)"
    )
    g.add_argument("--epochs", type=int, help="stage1.epochs")
    g.add_argument("--lr", type=float, help="stage1.lr")
    g.add_argument("--weight-decay", type=float, help="stage1.weight_decay")
    g.add_argument("--batch-size", type=int, help="stage1.batch_size")
    g.add_argument("--seed", type=int, help="stage1.seed")
    g.add_argument("--dataset", help="data.dataset")
    g.add_argument("--root", help="data.root (default: $LORT_DATA)")
    g.add_argument("--imbalance-ratio", type=float, help="data.imbalance_ratio")


def _run_config(args: argparse.Namespace):
    from .config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    for attr, key in SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .stage1.train import train

    cfg = _run_config(args)
    summary = train(cfg, args.out, resume=args.resume)
    if summary:
        t = summary["test"]
        print(
            f"stage 1 done: {summary['selected_checkpoint']} (epoch {summary['selected_epoch']}, "
            f"{summary['selected_by']}); test acc {t['acc']:.4f} "
            f"(many {t['many']}, medium {t['medium']}, few {t['few']}); {args.out}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lort",
        description="Long-tailed recognition by decoupled training: stage 1, classifier re-training, analysis.",
    )
    parser.add_argument("--version", action="version", version=f"lort {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="build and inspect long-tailed datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    info = data_sub.add_parser("info", help="print classes, counts, IR, groups and split sizes")
    _add_data_args(info)
    info.set_defaults(func=cmd_data_info)
    plot = data_sub.add_parser("plot", help="write the class-count bar chart as PNG")
    _add_data_args(plot)
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.set_defaults(func=cmd_data_plot)

    tr = sub.add_parser("train", help="stage 1: train a backbone on the long-tailed set")
    _add_config_args(tr)
    tr.add_argument(
        "--out", required=True, help="run folder (checkpoints, metrics.jsonl, summary.json)"
    )
    tr.add_argument(
        "--resume", action="store_true", help="continue the run in --out where it stopped"
    )
    tr.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LortError as exc:
        print(f"lort: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
