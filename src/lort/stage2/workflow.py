"""Feature sets from a checkpoint or a file, and the retrain / compare jobs behind the CLI."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.metrics import analyze
from ..data import DataConfig, LongTailedDataset, build_dataset
from ..data.features import FeatureSet, load_features
from ..data.transforms import NORMALIZATIONS
from ..env_info import environment
from ..errors import LortError
from ..io import save_npz, save_torch, write_json
from ..layout import CompareRun
from ..models import model_input_size
from ..runtime.checkpoint import load_model
from .compare import compare, compare_by_cv, evaluate_test, fit_method
from .extract import extract_features
from .full import BackboneFeatures
from .heads import LinearHead, logits_of
from .leaderboard import markdown, write_leaderboard
from .methods import get_method, resolve_methods
from .schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, DEFAULT_SEEDS, Schedule


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class CheckpointFeatures:
    """Features extracted with a stage-1 checkpoint, and what produced them."""

    features: FeatureSet
    model: torch.nn.Module  # on the CPU
    checkpoint: dict
    dataset: LongTailedDataset


@dataclass
class FeatureSource:
    """A representation to re-train on: the features, and — when they come from a
    checkpoint — the backbone; ``train_source`` is the frozen backbone over augmented
    images in full mode, else None (cached features)."""

    features: FeatureSet
    name: str
    model: torch.nn.Module | None = None
    checkpoint: dict | None = None
    train_source: BackboneFeatures | None = None


def features_from_checkpoint(
    checkpoint: str | Path,
    root: str | None = None,
    views: int = 1,
    progress: bool = False,
    tta_flip: bool = False,
    device: torch.device | None = None,
    workers: int = 0,
) -> CheckpointFeatures:
    """Build the checkpoint's dataset (its saved data config; ``root`` may relocate it) and
    extract features with the frozen backbone in eval mode."""
    model, ckpt = load_model(checkpoint)
    data = dict(ckpt["config"]["data"])
    if root is not None:
        data["root"] = root
    ds = build_dataset(DataConfig(**data))
    if ds.num_classes != ckpt["num_classes"]:
        raise LortError(f"{checkpoint}: {ckpt['num_classes']} classes, its dataset now has {ds.num_classes}")
    ds.require_trained_on(ckpt.get("train_counts"), checkpoint, "these would not be the features it learned from")
    device = device or default_device()
    model = model.to(device).to(memory_format=torch.channels_last)
    size = None if ds.train.images is not None else model_input_size(ckpt["arch"])  # as stage 1 trained it
    fs = extract_features(
        model, ds, views=views, device=device, input_size=size, progress=progress, tta_flip=tta_flip, workers=workers
    )
    fs.meta |= {"checkpoint": str(checkpoint), "dataset": ds.summary()}
    return CheckpointFeatures(fs, model.cpu(), ckpt, ds)


def features_from_module_file(
    path: str | Path,
    data: DataConfig,
    layer: str | None = None,
    input_size: int | None = None,
    views: int = 1,
    progress: bool = False,
    tta_flip: bool = False,
    device: torch.device | None = None,
    workers: int = 0,
    normalize: tuple[tuple, tuple] = NORMALIZATIONS["imagenet"],
) -> FeatureSet:
    """Features of ``data`` from a user's model file (``torch.export`` program or TorchScript:
    its output; a saved ``nn.Module``: the input of ``layer`` or of its last linear layer, which
    is also kept as the classifier to warm-start from when it has one output per class).
    ``input_size`` resizes every dataset, small images included (default: small images at
    their size, image files cropped to 224); ``normalize`` is ``(mean, std)``, ImageNet's by
    default, as most pretrained networks expect."""
    from ..io import file_digest
    from ..model_files import LayerInputs, feature_fn, load_module_file

    model = load_module_file(path)
    fn = feature_fn(model, layer)
    ds = build_dataset(data)
    if progress:  # what the features will be of: a user's folder subsampled by a profile says so
        print(ds.describe(), file=sys.stderr)
    device = device or default_device()
    model = model.to(device)
    if not isinstance(model, torch.jit.ScriptModule):
        model = model.to(memory_format=torch.channels_last)
    classifier = fn.layer if isinstance(fn, LayerInputs) else None
    fs = extract_features(
        model,
        ds,
        views=views,
        device=device,
        input_size=input_size,
        progress=progress,
        tta_flip=tta_flip,
        features=fn,
        classifier=classifier,
        workers=workers,
        normalize=normalize,
    )
    fs.meta |= {
        "model_file": str(path),
        "model_sha256": file_digest(path),
        "layer": getattr(fn, "name", None),
        "dataset": ds.summary(),
    }
    return fs


def run_compare(
    fs: FeatureSet,
    methods: list[str],
    out: str | Path,
    schedule: Schedule,
    lrs=DEFAULT_LRS,
    source: str = "",
    progress=None,
    train_source=None,
    fixed: dict | None = None,
    plan=None,
    show_progress: bool = False,
    fits_per_method: int | None = DEFAULT_FITS_PER_METHOD,
    seeds: int = DEFAULT_SEEDS,
    cv: int | None = None,
) -> tuple[list, Path]:
    t0 = time.perf_counter()
    caveat = cv_caveat(fs) if cv is not None else None
    if cv is not None:
        if train_source is not None:
            raise LortError("--cv runs on cached features; full mode (--mode full) is not supported with it")
        if caveat:
            print(f"warning: {caveat}", file=sys.stderr)
        results = compare_by_cv(fs, resolve_methods(methods), schedule, lrs, fixed, cv, fits_per_method, seeds)
    else:
        results = compare(
            fs,
            resolve_methods(methods),
            schedule,
            lrs,
            fixed,
            progress=progress,
            train_source=train_source,
            plan=plan,
            show_progress=show_progress,
            fits_per_method=fits_per_method,
            seeds=seeds,
        )
    selection = (
        "every hyperparameter and the epoch chosen on validation balanced accuracy; test evaluated once"
        if cv is None
        else f"every hyperparameter and the epoch chosen by {results[0].verdicts.selection} (the validation split, "
        "if any, not used); test evaluated once"
    )
    meta = {
        "source": source,
        "fixed_hyperparameters": fixed or {},
        "schedule": dataclasses.asdict(schedule),
        "lrs": list(lrs) if lrs else [schedule.lr],
        "selection": selection,
        "budget": fits_per_method if fits_per_method is not None else "grid",
        "seeds": seeds,
        "tta": bool(fs.meta.get("tta_flip", False)),
        "init_classifier": fs.meta.get("init_classifier", "the classifier given with the features (stage 1)"),
        "mode": "cache" if train_source is None else f"full (BatchNorm {train_source.bn_mode})",
        "num_classes": fs.num_classes,
        "train_counts": fs.train_counts.tolist(),
        "total_time_s": round(time.perf_counter() - t0, 2),
        "environment": environment(schedule.seed),
    }
    notes = [
        f"features: {source}",
        f"schedule: {dataclasses.asdict(schedule)}; learning rates given: {meta['lrs']}",
        "search budget: "
        + (
            f"{fits_per_method} fits per method, every method alike (grid points spread over each grid, the default among them)"
            if fits_per_method is not None
            else "every method's whole grid (budgets differ between methods)"
        )
        + f"; stage-2 seeds: {seeds}",
        f"selection: {selection}" + (f" (caveat: {caveat})" if caveat else ""),
        f"mode: {meta['mode']}",
        "test-time augmentation: " + ("ON (flip averaging)" if meta["tta"] else "off"),
        f"warm start: {meta['init_classifier']}",
    ]
    path = write_leaderboard(out, results, fs, meta, notes=notes)
    return results, path


CV_ON_TRAINED_IMAGES = (
    "the features come from a lort stage-1 checkpoint ({}) trained on these training images: each held-out fold "
    "holds images the backbone fitted, so cross-validated scores are optimistic and can favour methods that keep "
    "the training distribution (see results/crossval/); a validation split the backbone never saw is safer"
)


def cv_caveat(fs: FeatureSet) -> str | None:
    """The warning cross-validation on these features needs, if any."""
    ckpt = fs.meta.get("checkpoint")
    return CV_ON_TRAINED_IMAGES.format(ckpt) if ckpt else None


def run_selected_retrain(
    fs: FeatureSet,
    methods: list[str],
    out: str | Path,
    schedule: Schedule,
    lrs,
    cv: int | None,
    source: str = "",
    backbone_trained_on_train: str = "auto",
) -> str:
    """Choose among ``methods`` (``["auto"]``: every method) and their settings by
    ``cv``-fold cross-validation on the training split (or, without ``cv``, on the
    validation split), refit the winner on the training split, evaluate test once; write
    ``selection.json`` (the ranking, the choice, how it was made, the test report) and
    ``classifier.npz``. Returns the ranking as a Markdown table."""
    from ..analysis.metrics import prediction_report
    from ..analysis.tables import markdown_table
    from ..estimator import RetrainingClassifierCV

    if cv is None and not fs.has_split("val"):
        raise LortError(f"{source or 'the features'}: no validation split to choose on; pass --cv K")
    if backbone_trained_on_train not in ("auto", "yes", "no"):
        raise LortError(f"backbone_trained_on_train must be auto, yes or no, got {backbone_trained_on_train!r}")
    caveat = cv_caveat(fs) if cv is not None else None
    seen = cv is not None and (backbone_trained_on_train == "yes" or (backbone_trained_on_train == "auto" and caveat))
    if seen:
        caveat = (caveat or "the backbone was trained on these training images (--backbone-trained-on-train yes)") + (
            "; the folds are reported and LORT is kept at its defaults (--backbone-trained-on-train no lets "
            "the folds choose)"
        )
    if caveat:
        print(f"warning: {caveat}", file=sys.stderr)
    x, y = fs.splits["train"]
    est = RetrainingClassifierCV(
        method="auto" if methods == ["auto"] else methods,
        cv=cv if cv is not None else 5,
        lr=list(lrs),
        epochs=schedule.epochs,
        batch_size=schedule.batch_size,
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
        init_coef=fs.init_weight,
        init_intercept=fs.init_bias,
        random_state=schedule.seed,
        backbone_trained_on_X=bool(seen),
    )
    val = {} if cv is not None else {"X_val": fs.splits["val"][0], "y_val": fs.splits["val"][1]}
    est.fit(x, y, **val)
    xt, yt = fs.splits["test"]
    test = prediction_report(est.predict(xt), yt, fs.train_counts)
    res = est.cv_results_
    rows = [
        [res["rank_test_score"][i], m, round(100 * float(res["mean_test_score"][i]), 2),
         round(100 * float(res["std_test_score"][i]), 2), res["params"][i]]
        for i, m in enumerate(res["method"])
    ]  # fmt: skip
    rows.sort(key=lambda r: r[0])
    table = markdown_table(["rank", "method", "selection score (balanced acc %)", "sd over folds", "chosen"], rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "selection.json",
        {
            "source": source,
            "selection": est.selection_,
            "chosen_method": est.best_method_,
            "chosen": est.best_params_,
            "selection_score": None if np.isnan(est.best_score_) else est.best_score_,
            "note": "the selection score of the chosen method is biased upwards by the choice; "
            "RetrainingClassifierCV(nested=True) estimates it without that optimism",
            "caveat": caveat,
            "backbone_trained_on_train": bool(seen),
            "ranking": [dict(zip(("rank", "method", "score", "sd", "chosen"), r, strict=True)) for r in rows],
            "test": test,
            "schedule": dataclasses.asdict(schedule),
            "environment": environment(schedule.seed),
        },
    )
    save_npz(out / "classifier.npz", weight=est.coef_.astype(np.float32), bias=est.intercept_.astype(np.float32))
    return (
        f"Selection: {est.selection_}. Chosen: {est.best_method_} {est.best_params_}; "
        f"test accuracy {100 * test['acc']:.2f}%.\n\n" + table
    )


def run_retrain(
    fs: FeatureSet,
    method: str,
    out: str | Path,
    schedule: Schedule,
    lrs=DEFAULT_LRS,
    fixed: dict | None = None,
    model: torch.nn.Module | None = None,
    ckpt: dict | None = None,
    source: str = "",
    train_source=None,
):
    """Re-train one method (choices on validation), evaluate test once, write the classifier
    (``classifier.npz``), the summary and — with a backbone — the full model (``model.pt``)."""
    result = fit_method(get_method(method), fs, schedule, lrs, fixed, train_source=train_source)
    evaluate_test(result, fs)
    out = Path(out)
    meta = {
        "source": source,
        "schedule": dataclasses.asdict(schedule),
        "environment": environment(schedule.seed),
    }
    write_leaderboard(out, [result], fs, meta, title=f"Re-trained classifier: {method}")
    if model is not None and ckpt is not None:
        if not result.head.plain_linear:  # cosine heads need normalised features
            raise LortError(f"method {method} does not produce a plain linear classifier; no model.pt written")
        w, b = result.head.linear_params()
        fc = model.get_classifier()
        with torch.no_grad():
            fc.weight.copy_(w[0])
            fc.bias.copy_(b[0])
        state = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler", "model")}
        save_torch(CompareRun(out).model, state | {"model": model.state_dict(), "stage2": result.row()})
    write_json(CompareRun(out).summary, result.row() | {"val": result.val, "test": result.test})
    return result, markdown([result], f"Re-trained classifier: {method}")


def load_feature_source(
    features: str | None,
    checkpoint: str | None,
    root: str | None,
    views: int = 1,
    mode: str = "cache",
    bn_mode: str = "eval",
    seed: int = 0,
) -> FeatureSource:
    """The representation of ``--features FILE`` or ``--checkpoint RUN/last.pt``."""
    if bool(features) == bool(checkpoint):
        raise LortError("give exactly one of --features FILE.npz or --checkpoint RUN/last.pt")
    if mode not in ("cache", "full"):
        raise LortError(f"mode must be cache or full, got {mode!r}")
    if features:
        if mode == "full":
            raise LortError("full mode runs the backbone every epoch: give --checkpoint, not --features")
        return FeatureSource(load_features(features), str(features))
    got = features_from_checkpoint(checkpoint, root, views, progress=True)
    train_source = BackboneFeatures(got.model, got.dataset.train.images, bn_mode, seed) if mode == "full" else None
    return FeatureSource(got.features, str(checkpoint), got.model, got.checkpoint, train_source)


def analyze_logits_file(path: str | Path, split: str = "test") -> dict:
    """Every metric of :func:`lort.analysis.metrics.analyze` for a logits file that
    ``lort compare`` wrote (``<split>_logits``, ``<split>_labels``, ``train_counts``)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            z, y, counts = d[f"{split}_logits"], d[f"{split}_labels"], d["train_counts"]
    except (OSError, KeyError, ValueError) as exc:
        raise LortError(f"{path}: not a lort logits file ({exc})") from None
    return analyze(z, y, counts)


def analyze_given_classifier(source: FeatureSource, split: str = "test") -> dict:
    """Every metric for the classifier that came with the features (``init_weight``)."""
    fs = source.features
    if fs.init_weight is None:
        raise LortError(f"{source.name}: the features carry no classifier (init_weight) to analyse")
    if split not in fs.splits:
        raise LortError(f"{source.name}: no {split} split to analyse")
    x, y = fs.splits[split]
    bias = fs.init_bias if fs.init_bias is not None else np.zeros(fs.num_classes)
    head = LinearHead(torch.as_tensor(fs.init_weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32))
    return analyze(logits_of(head, x), y, fs.train_counts, fs.init_weight, fs.init_bias)
