"""The ``lort`` command line: parse, build a config, call the library. Bad input -> exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import LortError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS, DataConfig
    from .data.profiles import PROFILES

    d = DataConfig()  # the defaults' one owner
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS, help=f"dataset (default {d.dataset})")
    g.add_argument("--root", help="data folder (default: $LORT_DATA)")
    g.add_argument(
        "--imbalance-ratio",
        type=float,
        default=d.imbalance_ratio,
        help=f"n_max / n_min (default {d.imbalance_ratio:g})",
    )
    g.add_argument("--profile", default=d.profile, choices=PROFILES, help="imbalance profile")
    g.add_argument("--max-per-class", type=int, help="n_max (default: all images of the largest class)")
    g.add_argument(
        "--selection",
        default=d.selection,
        choices=("first", "random"),
        help="which images a class keeps",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seed of random selection and the validation split")
    g.add_argument(
        "--val-per-class",
        type=int,
        default=d.val_per_class,
        help=f"validation images per class (default {d.val_per_class})",
    )
    g.add_argument("--download", action="store_true", help="download official CIFAR archives when missing")
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
        asked = s.get("imbalance_ratio_requested")
        print(
            f"profile      {s['profile']}, imbalance ratio {s['imbalance_ratio']:g} measured"
            + (f" ({asked:g} requested)" if asked is not None else "")
            + f", n_max {s['max_per_class']}, selection {s['selection']}, seed {s['seed']}"
        )
    print(f"train        {s['train_size']} images; per class (head first):")
    width = max(len(c) for c in ds.classes)
    groups = ds.groups
    for name, n, g in zip(ds.classes, counts, groups, strict=True):
        print(f"  {name:<{width}}  {n:>6}  {GROUP_NAMES[g]}")
    print("groups       " + ", ".join(f"{k} {v}" for k, v in s["groups"].items()))
    where = s.get("val_source") or (
        "the source's validation list" if s.get("profile") == "given" else "held out from unused training images"
    )
    print(f"validation   {s['val_size']} images ({where})")
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
    "profile": "data.profile",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    from .data.profiles import PROFILES

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
    g.add_argument("--model", help="stage1.model (resnet32, resnet34_cifar, resnet50, resnext50_32x4d)")
    g.add_argument("--epochs", type=int, help="stage1.epochs")
    g.add_argument("--lr", type=float, help="stage1.lr")
    g.add_argument("--weight-decay", type=float, help="stage1.weight_decay")
    g.add_argument("--batch-size", type=int, help="stage1.batch_size")
    g.add_argument("--seed", type=int, help="stage1.seed")
    g.add_argument("--dataset", help="data.dataset")
    g.add_argument("--root", help="data.root (default: $LORT_DATA)")
    g.add_argument("--imbalance-ratio", type=float, help="data.imbalance_ratio")
    g.add_argument("--profile", choices=PROFILES, help="data.profile (none: your folder's own class distribution)")


def _run_config(args: argparse.Namespace):
    from .config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    for attr, key in SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    path = args.config or getattr(args, "config_file", None)
    if args.config and getattr(args, "config_file", None):
        raise LortError("give the config once: CONFIG or --config")
    return load_config(path, overrides)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def cmd_train(args: argparse.Namespace) -> int:
    from .stage1.train import train

    cfg = _run_config(args)
    summary = train(cfg, args.out, resume=args.resume)
    if summary:
        t = summary["test"]
        print(
            f"stage 1 done: {summary['selected_checkpoint']} (epoch {summary['selected_epoch']}, "
            f"{summary['selected_by']}); test acc {t['acc']:.4f} "
            f"(many {_pct(t['many'])}, medium {_pct(t['medium'])}, few {_pct(t['few'])}); {args.out}"
        )
        print(f"stage 2 (as lort run): lort extract --checkpoint {Path(args.out) / 'last.pt'} --out FEATURES.npz")
    return 0


def _add_stage2_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("representation (one of)")
    src.add_argument("--features", help=".npz feature file (train/val/test features and labels)")
    src.add_argument("--checkpoint", help="stage-1 checkpoint: features are extracted from its dataset")
    src.add_argument("--root", help="data folder for --checkpoint (default: as recorded, or $LORT_DATA)")
    src.add_argument("--views", type=int, default=1, help="training views in the feature cache (1 = plain)")
    src.add_argument(
        "--mode",
        default="cache",
        choices=("cache", "full"),
        help="cache: train on cached features (default); full: the reference protocol, augmented "
        "images through the frozen backbone every epoch (needs --checkpoint)",
    )
    src.add_argument("--bn-mode", default="eval", choices=("eval", "train"), help="BatchNorm mode, full mode")
    from .stage2.schedule import DEFAULT_LRS, Schedule

    g = p.add_argument_group("schedule (defaults: the reference recipe)")
    g.add_argument("--epochs", type=int, default=Schedule.epochs)
    g.add_argument("--batch-size", type=int, default=Schedule.batch_size)
    g.add_argument("--momentum", type=float, default=Schedule.momentum)
    g.add_argument("--weight-decay", type=float, default=Schedule.weight_decay)
    g.add_argument("--seed", type=int, default=Schedule.seed)
    g.add_argument("--lr", type=float, help="fix the learning rate (default: search --lrs on validation)")
    g.add_argument(
        "--lrs", default=",".join(f"{v:g}" for v in DEFAULT_LRS), help="learning rates searched on validation"
    )
    p.add_argument("--out", required=True, help="output folder")


def _schedule(args: argparse.Namespace):
    from .stage2.schedule import Schedule

    try:
        lrs = tuple(float(v) for v in args.lrs.split(",") if v.strip())
    except ValueError:
        raise LortError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
    if args.lr is not None:
        lrs = (args.lr,)
    return Schedule.searching(
        lrs,
        epochs=args.epochs,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
    )


MODEL_FORMATS = (
    "torch.export program (.pt2, saved with torch.export.save; export it with a dynamic batch dimension), "
    "TorchScript (torch.jit.save) or a whole pickled nn.Module (torch.save(model))"
)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise LortError(f"{flag} takes comma-separated numbers such as 0.5,0.5,0.5; got {text!r}") from None


def _fixed_params(items: list[str], method: str | None = None, single: bool = False) -> dict[str, dict]:
    """``--set METHOD.PARAM=VALUE`` (or ``PARAM=VALUE`` for the one method of ``retrain``)
    as ``{method: {param: value}}``; VALUE is YAML (``0.98``, ``[0.9, 0.98]`` to search)."""
    from .config import parse_override

    fixed: dict[str, dict] = {}
    for item in items or []:
        key, value = parse_override(item)
        name, dot, param = key.rpartition(".")
        if not dot:
            if not single:
                raise LortError(f"--set {item!r}: name the method, e.g. --set lort.smooth=0.98")
            name = method
        elif single and name != method:
            raise LortError(f"--set {item!r} names method {name!r}, but this command re-trains {method!r}")
        fixed.setdefault(name, {})[param] = value
    return fixed


def cmd_extract(args: argparse.Namespace) -> int:
    from .runtime.distributed import cleanup, setup_distributed
    from .stage2.workflow import features_from_checkpoint, features_from_module_file

    if bool(args.checkpoint) == bool(args.model):
        raise LortError(f"give exactly one of --checkpoint RUN/last.pt or --model FILE ({MODEL_FORMATS})")
    if not args.model and (args.layer or args.input_size or args.normalize or args.mean or args.std):
        raise LortError(
            "--layer, --input-size, --normalize, --mean and --std apply to --model files only "
            "(a lort checkpoint is fed as its stage 1 was trained)"
        )
    if args.input_size is not None and args.input_size < 1:
        raise LortError(f"--input-size must be a positive number of pixels, got {args.input_size}")
    info = setup_distributed()
    try:
        if args.checkpoint:
            fs = features_from_checkpoint(
                args.checkpoint, args.root, args.views, info.is_main, args.tta_flip, info.device, args.workers
            ).features
        else:
            from .data.transforms import normalization

            norm = normalization(args.normalize or "imagenet", _floats(args.mean, "--mean"), _floats(args.std, "--std"))
            fs = features_from_module_file(
                args.model,
                _data_config(args),
                args.layer,
                args.input_size,
                args.views,
                info.is_main,
                args.tta_flip,
                info.device,
                args.workers,
                norm,
            )
        if info.is_main:
            from .env_info import environment

            fs.meta["environment"] = environment(args.seed) | {"world_size": info.world_size}
            fs.save(args.out)
            sizes = ", ".join(f"{k} {len(v[1])}" for k, v in fs.splits.items())
            ranks = f", extracted by {info.world_size} processes" if info.enabled else ""
            print(f"{args.out}: {fs.dim}-d features, {fs.num_classes} classes ({sizes}){ranks}")
    finally:
        cleanup(info)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from .stage2.methods import get_method
    from .stage2.workflow import load_feature_source, run_retrain, run_selected_retrain

    names = [m.strip() for m in args.method.split(",") if m.strip()]
    if args.cv is not None or names == ["auto"] or len(names) > 1:
        if args.smooth is not None or args.target_ratio is not None or args.params:
            raise LortError("--smooth, --target-ratio and --set fix one method's hyperparameters; with --cv or "
                            "several methods each method's own grid is searched")  # fmt: skip
        for name in names if names != ["auto"] else []:
            get_method(name)
        schedule, lrs = _schedule(args)
        src = load_feature_source(
            args.features, args.checkpoint, args.root, args.views, args.mode, args.bn_mode, args.seed
        )
        table = run_selected_retrain(
            src.features, names, args.out, schedule, lrs, args.cv, src.name, args.backbone_trained_on_train
        )
        print(table)
        print(f"written to {args.out}")
        return 0

    method = get_method(args.method)
    fixed = _fixed_params(args.params, method.name, single=True).get(method.name, {})
    for name in ("smooth", "target_ratio"):  # shortcuts for --set smooth=... / target_ratio=...
        if getattr(args, name) is not None:
            fixed[name] = getattr(args, name)
    method.settings(fixed)  # unknown or out-of-range hyperparameters fail before any work
    schedule, lrs = _schedule(args)
    src = load_feature_source(args.features, args.checkpoint, args.root, args.views, args.mode, args.bn_mode, args.seed)
    _, table = run_retrain(
        src.features, args.method, args.out, schedule, lrs, fixed, src.model, src.checkpoint, src.name, src.train_source
    )
    print(table)
    print(f"written to {args.out}")
    return 0


def _budget(text: str) -> int | None:
    """``--budget``: a positive number of fits per method, or ``grid`` (None)."""
    if str(text).strip().lower() == "grid":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise LortError(f"--budget must be a positive number of fits per method or 'grid', got {text!r}")
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    from .stage2.compare import check_fixed
    from .stage2.methods import resolve_methods
    from .stage2.plan import make_plan, matmul_rate, step_costs
    from .stage2.schedule import check_comparison
    from .stage2.workflow import load_feature_source, run_compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    resolved = resolve_methods(methods)
    fixed = check_fixed(_fixed_params(args.params), resolved)  # bad names fail before any work
    schedule, lrs = _schedule(args)
    fits = _budget(args.budget)
    check_comparison(fits, args.seeds)
    if args.memory_budget is not None and args.memory_budget <= 0:
        raise LortError(f"--memory-budget must be a positive number of MiB, got {args.memory_budget}")
    src = load_feature_source(args.features, args.checkpoint, args.root, args.views, args.mode, args.bn_mode, args.seed)
    memory_bytes = None if args.memory_budget is None else int(args.memory_budget * 2**20)
    plan = make_plan(resolved, src.features, schedule, lrs, fixed, memory_bytes, fits_per_method=fits, seeds=args.seeds)
    print(plan.describe(matmul_rate(plan), step_costs()), file=sys.stderr)
    if args.cv is not None:
        print(
            f"      --cv {args.cv}: every fit above repeated in each of {args.cv} folds, then refitted", file=sys.stderr
        )
    if args.dry_run:
        return 0
    _, path = run_compare(
        src.features,
        methods,
        args.out,
        schedule,
        lrs,
        src.name,
        train_source=src.train_source,
        fixed=fixed,
        plan=plan,
        show_progress=True,
        fits_per_method=fits,
        seeds=args.seeds,
        cv=args.cv,
    )
    print(path.read_text())
    print(f"written to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    cfg = _run_config(args)
    result = run_pipeline(cfg, args.out, " ".join(["lort", *sys.argv[1:]]))
    if result:
        print(result["leaderboard"].read_text())
        print(f"report: {result['report']}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .stage1.tune import format_value, load_space, tune

    cfg = _run_config(args)
    space = load_space(args.space)  # a bad space fails before the data is read
    summary = tune(
        cfg,
        args.out,
        trials=args.trials,
        epochs=args.proxy_epochs,
        sampler=args.sampler,
        pruner=args.pruner,
        storage=args.storage,
        study_name=args.study_name,
        space=space,
        seed=args.tune_seed,
        timeout=args.timeout,
        keep_checkpoints=args.keep_checkpoints,
    )
    best = summary["best"]
    if best is None:
        print(f"no trial complete; see {Path(args.out) / 'trials.csv'}")
        return 1
    chosen = Path(args.out) / best["config"]
    print(
        f"best: trial {best['trial']}, validation balanced accuracy {best['val_balanced_acc']:.4f}, "
        + ", ".join(f"{k}={format_value(v)}" for k, v in best["params"].items())
        + f"\nconfig: {chosen}\nreport: {Path(args.out) / 'report.md'}"
    )
    if args.final:
        from .config import load_config
        from .pipeline import run_pipeline

        final = Path(args.out) / "final"
        result = run_pipeline(load_config(chosen), final, f"lort run {chosen} --out {final}")
        if result:
            print(result["leaderboard"].read_text())
            print(f"report: {result['report']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report
    from .stage1.tune import is_tune_folder, tune_report

    if is_tune_folder(args.run_dir):
        print(tune_report(args.run_dir))
        return 0
    html, md = build_report(args.run_dir)
    print(f"{html}\n{md}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from .io import write_json
    from .stage2.workflow import analyze_given_classifier, analyze_logits_file, load_feature_source

    if args.logits:
        rep = analyze_logits_file(args.logits, args.split)
    else:
        rep = analyze_given_classifier(load_feature_source(args.features, args.checkpoint, args.root), args.split)
    if args.out:
        write_json(args.out, rep)
    g = rep["group_means"]
    print(
        f"accuracy {rep['acc']:.4f}  balanced {rep['balanced_acc']:.4f}  top-5 {rep['top5_acc']:.4f}  ECE {rep['ece']:.4f}"
    )
    for name in (
        "accuracy",
        "logits_magnitude",
        "logits_magnitude_normalized",
        "rsd_positive",
        "rsd_negative",
        "weight_norm",
    ):
        if name in g:
            print(
                f"{name:28s} "
                + "  ".join(
                    f"{k} {'–' if g[name][k] is None else f'{g[name][k]:.3f}'}" for k in ("many", "medium", "few")
                )
            )
    if not args.out:
        print(json.dumps({k: rep[k] for k in ("acc", "balanced_acc", "many", "medium", "few")}))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .data.features import load_features
    from .io import write_json
    from .stage2.sweep import sensitivity_grid, smoothing_sweep

    fs = load_features(args.features)
    out = args.out
    points = smoothing_sweep(fs)
    write_json(f"{out}/sweep.json", points)
    write_json(f"{out}/sensitivity.json", sensitivity_grid(fs))
    for p in points:
        t = p["test"]
        print(
            f"s={p['smooth']:.3f} r={p['target_ratio'] or float('inf'):.2f} epoch {p['epoch']}: "
            f"val {100 * p['val']['balanced_acc']:.2f}  test {100 * t['acc']:.2f}"
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
    tr.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, summary.json)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    tr.set_defaults(func=cmd_train)

    ex = sub.add_parser(
        "extract",
        help="write frozen features to .npz: a lort checkpoint's dataset, or any dataset through your own model file",
        description="Under torchrun each process extracts a shard and the first writes the file.",
    )
    ex.add_argument("--checkpoint", help="lort stage-1 checkpoint (e.g. RUN/last.pt): its own dataset is used")
    ex.add_argument(
        "--model",
        help="your model file: a torch.export program (.pt2) or TorchScript file (its output = the features), "
        "or a whole nn.Module saved with torch.save (the input of its last nn.Linear = the features)",
    )
    ex.add_argument(
        "--layer", help="--model: the classifier layer whose input is the feature (default: last nn.Linear)"
    )
    ex.add_argument(
        "--input-size",
        type=int,
        help="--model: the image size your network expects; every dataset is resized to it, small images included "
        "(default: small images at their own size, image files cropped to 224)",
    )
    ex.add_argument(
        "--normalize",
        choices=["imagenet", "cifar", "none"],
        help="--model: input normalisation your network was trained with (default imagenet)",
    )
    ex.add_argument("--mean", help="--model: explicit per-channel mean, e.g. 0.5,0.5,0.5 (with --std)")
    ex.add_argument("--std", help="--model: explicit per-channel std, e.g. 0.5,0.5,0.5 (with --mean)")
    ex.add_argument("--views", type=int, default=1, help="training views (1 = plain images)")
    ex.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader processes decoding JPEGs for file datasets (default min(4, CPUs); 0 = in process)",
    )
    ex.add_argument("--out", required=True, help=".npz file to write")
    ex.add_argument(
        "--tta-flip", action="store_true", help="average val/test features with the flipped image (off by default)"
    )
    _add_data_args(ex)  # --model: the dataset; --checkpoint: only --root (relocates the recorded data)
    ex.set_defaults(func=cmd_extract)

    rt = sub.add_parser("retrain", help="stage 2: re-train the classifier with one method (default LORT)")
    rt.add_argument(
        "--method",
        default="lort",
        help="stage-2 method (see `lort methods`), a comma-separated list, or auto (every method): "
        "several are ranked and the best kept",
    )
    rt.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="choose by stratified K-fold cross-validation on the training split (no validation split needed; "
        "the validation split, if any, is then not used)",
    )
    rt.add_argument(
        "--backbone-trained-on-train",
        choices=("auto", "yes", "no"),
        default="auto",
        help="with --cv: whether the backbone was trained on these training images (auto: yes for the features of a "
        "lort checkpoint's own training split). yes: its folds are optimistic, so they are reported and LORT is "
        "kept at its defaults (RetrainingClassifierCV's backbone_trained_on_X); no: the folds choose",
    )
    rt.add_argument("--smooth", type=float, help="LORT smoothing value s in [0, 1) (default: searched)")
    rt.add_argument(
        "--target-ratio",
        type=float,
        help="LORT target ratio r > 1 (K-independent alternative to s)",
    )
    rt.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="fix a hyperparameter of the method (a list such as [0.9,0.98] is searched on validation); "
        "`lort methods` lists each method's hyperparameters",
    )
    _add_stage2_args(rt)
    rt.set_defaults(func=cmd_retrain)

    cp = sub.add_parser("compare", help="stage 2: every method on one representation, leaderboard")
    cp.add_argument("--methods", default="all", help="comma-separated method names, or all")
    cp.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="METHOD.PARAM=VALUE",
        help="fix a method's hyperparameter, e.g. --set lort.smooth=0.98 or --set tau_norm.tau=[0.5,1] (repeatable)",
    )
    cp.add_argument("--dry-run", action="store_true", help="print the plan (settings, FLOP, memory, time) and stop")
    cp.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="choose every method's setting and epoch by stratified K-fold cross-validation on the training split "
        "(for features without a validation split; one given is not used)",
    )
    cp.add_argument(
        "--memory-budget",
        type=float,
        help="MiB stage 2 may use, features included (default: the features plus 90%% of the memory free now); "
        "it caps how many settings train side by side",
    )
    from .stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_SEEDS

    cp.add_argument(
        "--budget",
        default=str(DEFAULT_FITS_PER_METHOD),
        help=f"fits per method, the same for every method (default {DEFAULT_FITS_PER_METHOD}: 3 learning rates x 2 "
        "settings, or 6 learning rates for a method without hyperparameters); 'grid' trains every method's "
        "whole grid (unequal budgets)",
    )
    cp.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help=f"repeat stage 2 with this many seeds: mean, standard deviation, and simultaneous intervals "
        f"against the method validation picks (default {DEFAULT_SEEDS})",
    )
    _add_stage2_args(cp)
    cp.set_defaults(func=cmd_compare)

    rn = sub.add_parser("run", help="the whole pipeline from one config: data, stage 1, stage 2, report")
    rn.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML config, e.g. configs/demo.yaml")
    _add_config_args(rn)
    rn.add_argument("--out", required=True, help="run folder; re-running continues where it stopped")
    rn.set_defaults(func=cmd_run)

    from .stage1.tune import DEFAULT_STUDY, PRUNERS, SAMPLERS

    tu = sub.add_parser(
        "tune",
        help="stage 1: search lr, weight decay (or any stage1 key) on validation with Optuna; writes best.yaml",
        description="Optuna search over stage-1 hyperparameters. Each trial trains a short proxy schedule and "
        "is scored by its best validation balanced accuracy (the test split is never read); a pruner stops "
        "trailing trials from their per-epoch curve. Trials are stored (SQLite in --out by default), so "
        "re-running the command resumes the search. The winner's full-schedule config is written to "
        "OUT/best.yaml for `lort run`.",
    )
    tu.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML config, e.g. configs/cifar10_lt_ir100.yaml")
    _add_config_args(tu)
    tu.add_argument("--out", required=True, help="tune folder; re-running resumes the study")
    tu.add_argument("--trials", type=int, default=20, help="trials to finish, complete or pruned (default 20)")
    tu.add_argument(
        "--proxy-epochs",
        type=int,
        help="epochs of each trial (default: a quarter of stage1.epochs); the warm-up is scaled with it. "
        "--epochs sets stage1.epochs, the full schedule written to best.yaml",
    )
    tu.add_argument(
        "--space",
        help="YAML search space: stage1.KEY: {low, high, log} or {choices: [...]} "
        "(default: stage1.lr log [0.01, 0.4], stage1.weight_decay log [1e-4, 1e-2])",
    )
    tu.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), gp (Gaussian process), random")
    tu.add_argument(
        "--pruner", default="hyperband", choices=PRUNERS, help="early stopping of trials (default hyperband)"
    )
    tu.add_argument("--storage", help="Optuna storage URL shared by several processes (default: sqlite in --out)")
    tu.add_argument("--study-name", default=DEFAULT_STUDY, help=f"study name in the storage (default {DEFAULT_STUDY})")
    tu.add_argument("--tune-seed", type=int, default=0, help="seed of the sampler (default 0)")
    tu.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tu.add_argument(
        "--keep-checkpoints", action="store_true", help="keep each trial's checkpoints (removed by default)"
    )
    tu.add_argument("--final", action="store_true", help="then run the whole pipeline with best.yaml into OUT/final")
    tu.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="HTML page and Markdown summary of a run or comparison folder, or a tune study")
    rp.add_argument("run_dir", help="folder written by `lort run`, `lort compare` or `lort tune`")
    rp.set_defaults(func=cmd_report)

    an = sub.add_parser("analyze", help="metrics of a logits file, or of a checkpoint's/feature file's classifier")
    an.add_argument("--logits", help="logits .npz written by compare (logits/<method>.npz)")
    an.add_argument("--features", help=".npz feature file with its classifier (init_weight)")
    an.add_argument("--checkpoint", help="stage-1 checkpoint")
    an.add_argument("--root", help="data folder for --checkpoint")
    an.add_argument("--split", default="test", choices=("val", "test"))
    an.add_argument("--out", help="write every metric as JSON")
    an.set_defaults(func=cmd_analyze)

    sw = sub.add_parser("sweep", help="smoothing sweep (s and target ratio) and lr x weight-decay grid")
    sw.add_argument("--features", required=True, help=".npz feature file")
    sw.add_argument("--out", required=True, help="folder for sweep.json and sensitivity.json")
    sw.set_defaults(func=cmd_sweep)

    me = sub.add_parser("methods", help="list the stage-2 methods with their sources and searched hyperparameters")
    me.set_defaults(func=cmd_methods)
    return parser


def cmd_methods(args: argparse.Namespace) -> int:
    from .stage2.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:18s} {method.describe()}")
    return 0


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
