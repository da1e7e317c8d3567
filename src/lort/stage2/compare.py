"""Fit stage-2 methods on one frozen representation, choose every hyperparameter and the
epoch on the validation split (:mod:`lort.stage2.selection`), then evaluate the test split
once: the orchestration of methods x seeds -> results, over the plan
(:mod:`lort.stage2.plan`) and the engine (:mod:`lort.stage2.engine`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..analysis.metrics import accuracy_report, prediction_report
from ..analysis.uncertainty import RESAMPLES, Difference, Records, Verdicts, compare_to_reference
from ..data.features import FeatureSet
from ..errors import LortError
from .context import context, stage2_device
from .crossval import PREFERRED, cross_validate, one_standard_error, refit, stratified_folds
from .engine import train_jobs
from .heads import Head, head_device, logit_blocks, logits_of
from .methods import METHODS, FitContext, Method
from .plan import Job, plan_job
from .schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule, check_comparison
from .selection import best_index, best_record, better, head_validation_scores


@dataclass
class MethodResult:
    method: str
    title: str
    hyperparameters: dict[str, Any]
    epoch: int | None
    val: dict | None
    time_s: float
    head: Head = field(repr=False)
    search: list[dict] = field(default_factory=list, repr=False)
    test: dict | None = None
    fits: int = 0  # settings trained (or, post hoc, evaluated) and chosen among on validation
    correct: np.ndarray | None = field(default=None, repr=False)  # (seeds, n_test): right or wrong
    seeds: list[dict] = field(default_factory=list)  # each seed's choice and test accuracies
    difference: Difference | None = None  # test accuracy minus the reference's, with its interval and tier
    verdicts: Verdicts | None = field(default=None, repr=False)  # the leaderboard's statistics (shared)
    # every setting's classifier at its chosen epoch, until the test split has been scored
    candidates: list[Head] | None = field(default=None, repr=False)
    choice: int = 0  # index of the chosen setting among the candidates
    choices: list[int] = field(default_factory=list, repr=False)  # each seed's choice
    records: list[tuple[np.ndarray, ...]] = field(default_factory=list, repr=False)  # per seed, for the bootstrap
    duplicate_of: str | None = None  # another compared method that is the same algorithm here

    def row(self) -> dict:
        def pct(rep, key):
            return None if rep is None or rep.get(key) is None else round(100 * rep[key], 2)

        def mean_pct(key):
            values = [s["test"].get(key) for s in self.seeds if s.get("test")]
            values = [v for v in values if v is not None]
            return round(100 * float(np.mean(values)), 2) if values else pct(self.test, key)

        accs = [s["test"]["acc"] for s in self.seeds if s.get("test")]
        d = self.difference
        return {
            "method": self.method,
            "test_acc": mean_pct("acc"),
            "test_acc_sd": round(100 * float(np.std(accs, ddof=1)), 2) if len(accs) > 1 else None,
            "test_many": mean_pct("many"),
            "test_medium": mean_pct("medium"),
            "test_few": mean_pct("few"),
            "diff_to_reference": None if d is None else round(100 * d.diff, 2),
            "diff_ci": None if d is None else [round(100 * d.low, 2), round(100 * d.high, 2)],
            "tier": None if d is None else d.tier,
            "val_acc": pct(self.val, "balanced_acc"),
            "val_many": pct(self.val, "many"),
            "val_medium": pct(self.val, "medium"),
            "val_few": pct(self.val, "few"),
            "hyperparameters": self.hyperparameters,
            "epoch": self.epoch,
            "fits": self.fits,
            "seeds": max(1, len(self.seeds)),
            "duplicate_of": self.duplicate_of,
            "time_s": round(self.time_s, 2),
        }


def finish_job(job: Job, trained, ctx: FitContext, fs: FeatureSet, schedule: Schedule, xv, yv) -> MethodResult:
    """Choose ``job``'s best setting and epoch on validation; its classifier, post-hoc step
    applied. Without validation data the only setting and the last epoch."""
    t0 = time.perf_counter()
    method, settings, k = job.method, job.settings, fs.num_classes
    has_val = xv is not None
    search = []
    if method.trains:
        for point, (_, _, curve) in zip(settings, trained, strict=True):
            key = curve.reshape(len(curve), -1) if len(curve) else np.zeros((0, 1))  # empty without validation
            e = best_index(key) if len(key) else None
            search.append(
                {
                    "hyperparameters": point,
                    "epoch": schedule.epochs if e is None else e + 1,
                    "val_balanced_acc": None if e is None else float(key[e, 0]),
                    "val_log_loss": None if e is None or key.shape[1] < 2 else -float(key[e, 1]),
                    "curve": [round(float(c), 5) for c in key[:, 0]],
                }
            )
        best = best_record(search)
        heads = [
            method.posthoc(head.select(index), ctx, hp) for (head, index, _), hp in zip(trained, settings, strict=True)
        ]
        chosen = heads[best]
    else:
        heads = []
        for point in settings:
            h = method.posthoc(method.build_head(ctx, [point]), ctx, point)
            acc, neg_loss = head_validation_scores(h, xv, yv, k)[0].tolist() if has_val else (None, None)
            heads.append(h)
            search.append(
                {
                    "hyperparameters": point,
                    "epoch": None,
                    "val_balanced_acc": acc,
                    "val_log_loss": None if neg_loss is None else -neg_loss,
                    "curve": [],
                }
            )
        best = best_record(search)
        chosen = heads[best]
    point, epoch = search[best]["hyperparameters"], search[best]["epoch"]
    val = fs.splits.get("val")
    val_report = accuracy_report(logits_of(chosen, val[0]), val[1], fs.train_counts) if has_val else None
    if not has_val:
        point = point | {"note": "no validation split: defaults, nothing searched"}
    elif (note := method.choice_note(epoch, schedule.epochs)) is not None:
        point = point | {"note": note}
    records = [per_image_results(h, xv, yv) for h in heads] if has_val else []
    return MethodResult(
        method=method.name,
        title=method.title,
        hyperparameters=point,
        epoch=epoch,
        val=val_report,
        time_s=job.seconds + time.perf_counter() - t0,
        head=chosen,
        search=search,
        fits=len(settings),
        candidates=heads if has_val else None,
        choice=best,
        records=[tuple(np.stack(r) for r in zip(*records, strict=True))] if records else [],
    )


def per_image_results(head: Head, x, y, with_nll: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Whether ``head`` gets each row of ``x`` right and, ``with_nll``, each row's negative
    log-likelihood of its label (row blocks: no full logit matrix held)."""
    y = torch.as_tensor(y, device=head_device(head))
    right, nll, start = [], [], 0
    for block in logit_blocks(head, x):
        z = torch.from_numpy(block).to(y.device)
        yb = y[start : start + len(z)]
        right.append((z.argmax(1) == yb).cpu().numpy())
        if with_nll:
            nll.append(-F.log_softmax(z.float(), dim=1).gather(1, yb[:, None])[:, 0].cpu().numpy())
        start += len(z)
    return np.concatenate(right), (np.concatenate(nll) if with_nll else None)


def _validation(fs: FeatureSet, ctx: FitContext):
    if not fs.has_split("val"):
        return None, None
    xv, yv = fs.splits["val"]
    return torch.as_tensor(xv, device=ctx.device), torch.as_tensor(yv, device=ctx.device)


def fit_methods(
    methods: list[Method],
    fs: FeatureSet,
    schedule: Schedule,
    lrs,
    fixed: dict[str, dict[str, Any]],
    ctx: FitContext,
    train_source=None,
    progress=None,
    max_settings: int | None = None,
    bar=None,
    fits_per_method: int | None = None,
) -> list[MethodResult]:
    """Plan every method (``fits_per_method``, see :func:`plan_job`), train them (fused where they share a sampler and head kind, at
    most ``max_settings`` side by side), choose each one's setting and epoch on
    validation. Test data is never touched here."""
    xv, yv = _validation(fs, ctx)
    k = fs.num_classes
    score_fn = (lambda h: head_validation_scores(h, xv, yv, k)) if xv is not None else None
    jobs = [plan_job(m, schedule, lrs, fixed.get(m.name), xv is not None, fits_per_method) for m in methods]
    trained = train_jobs(jobs, ctx, schedule, score_fn, train_source, progress, max_settings, bar)
    return [finish_job(j, trained.get(id(j)), ctx, fs, schedule, xv, yv) for j in jobs]


def fit_method(
    method: Method,
    fs: FeatureSet,
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    fixed: dict[str, Any] | None = None,
    ctx: FitContext | None = None,
    train_source=None,
    device=None,
) -> MethodResult:
    """Search ``method``'s grid (and ``lrs``, for methods that train) on validation.

    ``fixed`` sets hyperparameters of the method (a value, or a list to search), checked
    against its declarations. All settings of a trained method are fitted side by side in
    one pass of the loop. Returns the classifier of the best (hyperparameters, epoch) by
    the selection rule (:mod:`lort.stage2.selection`: validation balanced accuracy, ties
    by the lower class-balanced log-loss, then the earlier). Without a validation split every
    hyperparameter not fixed takes its default (the source's, where it publishes one), the
    schedule's lr and the last epoch are used, and the result says so. Test data is
    never touched here. ``train_source`` replaces the cached training features (full
    mode: :class:`lort.stage2.full.BackboneFeatures`). ``device`` (default CPU) is where
    the features are moved once and every classifier trains, unless ``ctx`` gives it."""
    schedule = schedule or Schedule()
    ctx = ctx or context(fs, schedule, schedule.seed, device)
    result = fit_methods([method], fs, schedule, lrs, {method.name: fixed} if fixed else {}, ctx, train_source)[0]
    result.candidates, result.records = None, []  # only a comparison's statistics need the other settings
    return result


def check_fixed(fixed: dict[str, dict[str, Any]] | None, methods: list[Method]) -> dict[str, dict[str, Any]]:
    """``{method: {hyperparameter: value}}`` checked against the methods compared: an
    unknown method, or a hyperparameter the method does not declare, is refused."""
    fixed = dict(fixed or {})
    names = [m.name for m in methods]
    for name, values in fixed.items():
        if name not in names:
            raise LortError(
                f"hyperparameters given for {name!r}, which is not among the methods compared ({', '.join(names)})"
            )
        next(m for m in methods if m.name == name).fixed_values(values)
    return fixed


def evaluate_test(result: MethodResult, fs: FeatureSet) -> None:
    """Evaluate the chosen head on the test split (once) and store the report and which
    test images it got right (predictions taken block by block: no test logits held)."""
    x, y = fs.splits["test"]
    pred = np.concatenate([block.argmax(1) for block in logit_blocks(result.head, x)])
    result.test = prediction_report(pred, y, fs.train_counts)
    method = METHODS.get(result.method)
    if method is not None and not method.probabilities:
        result.test["ece"] = None  # its scores are not probabilities
    result.correct = (pred == np.asarray(y))[None]
    if result.candidates is not None and result.records:
        right = np.stack([per_image_results(h, x, y, with_nll=False)[0] for h in result.candidates])
        result.records = [(*result.records[0], right)]
        result.candidates = None  # the classifiers of the other settings are no longer needed


def _seed_record(seed: int, r: MethodResult) -> dict:
    test = {k: r.test.get(k) for k in ("acc", "balanced_acc", "many", "medium", "few")} if r.test else None
    return {
        "seed": seed,
        "hyperparameters": r.hyperparameters,
        "epoch": r.epoch,
        "val_balanced_acc": None if r.val is None else r.val.get("balanced_acc"),
        "test": test,
    }


def _merge_seeds(runs: list[list[MethodResult]], first_seed: int) -> list[MethodResult]:
    """The first seed's results, each carrying every seed's record, choice and test
    correctness (``runs[i][j]``: seed ``i``'s result of method ``j``)."""
    results = runs[0]
    for j, r in enumerate(results):
        same = [run[j] for run in runs]
        r.records = [x.records[0] for x in same if x.records]
        r.choices = [x.choice for x in same]
        r.seeds = [_seed_record(first_seed + i, x) for i, x in enumerate(same)]
        r.correct = np.concatenate([x.correct for x in same])
        r.time_s = sum(x.time_s for x in same)
    return results


def _stacked(records: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed ``(val right, val nll, test right)`` of ``(G, n)`` each -> ``(S, G, n)`` each."""
    return tuple(np.stack([rec[i] for rec in records]) for i in range(3))


def mark_duplicates(results: list[MethodResult], methods: list[Method]) -> None:
    """Flag each result whose chosen setting makes it the same algorithm as another
    compared method (e.g. the logit-adjusted loss at tau = 1 is Balanced Softmax)."""
    names = {r.method for r in results}
    for r, m in zip(results, methods, strict=True):
        twin = m.same_as(r.hyperparameters)
        r.duplicate_of = twin if twin in names else None


def compare(
    fs: FeatureSet,
    methods: list[Method],
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    fixed: dict[str, dict[str, Any]] | None = None,
    progress=None,
    train_source=None,
    device=None,
    memory_budget: int | None = None,
    plan=None,
    show_progress: bool = False,
    fits_per_method: int | None = DEFAULT_FITS_PER_METHOD,
    seeds: int = 1,
    resamples: int = RESAMPLES,
) -> list[MethodResult]:
    """Fit every method (selection on validation), then evaluate each on test once.
    ``fixed`` maps a method name to hyperparameters it fixes (see :func:`fit_method`);
    ``fits_per_method``: equal for all (:func:`plan_job`; None: every method's
    whole grid); ``seeds``: stage 2 is repeated with seeds ``schedule.seed + i`` (batch
    order, re-initialised heads) and each result carries every seed's choice and test
    accuracy, their mean, and its difference to the reference (the method validation
    picks) with a simultaneous interval from a two-level paired bootstrap of ``resamples``
    draws (:mod:`lort.analysis.uncertainty`; every choice re-made on each resampled
    validation split); the heads returned are the first seed's. Without a validation
    split there is no reference and no interval.
    ``device``: where the features go (once) and the classifiers train; default CPU;
    ``memory_budget`` (bytes, default what is free) caps the settings trained side by side
    (:func:`lort.stage2.plan.make_plan`; a ``plan`` made before may be given);
    ``show_progress`` draws one bar over the whole comparison, with its ETA."""
    from .plan import make_plan

    check_comparison(fits_per_method, seeds)
    schedule = schedule or Schedule()
    fixed = check_fixed(fixed, methods)
    plan = plan or make_plan(
        methods, fs, schedule, lrs, fixed, memory_budget, stage2_device(device), fits_per_method, seeds
    )
    if (plan.fits_per_method, plan.seeds, plan.epochs) != (fits_per_method, seeds, schedule.epochs):
        raise LortError(
            f"the plan given was made for {plan.fits_per_method} fits per method, {plan.seeds} seeds, {plan.epochs} epochs; "
            f"this comparison has {fits_per_method}, {seeds} seeds, {schedule.epochs} epochs"
        )
    total = plan.settings * plan.steps_per_epoch * plan.epochs * plan.seeds
    runs: list[list[MethodResult]] = []
    with tqdm(total=total, unit="step", unit_scale=True, desc="stage 2", disable=not show_progress) as bar:
        for i in range(seeds):
            sched = dataclasses.replace(schedule, seed=schedule.seed + i)
            ctx = context(fs, sched, sched.seed, device)
            found = fit_methods(
                methods, fs, sched, lrs, fixed, ctx, train_source, progress, plan.max_settings, bar, fits_per_method
            )
            for r in found:
                evaluate_test(r, fs)
            runs.append(found)
    results = _merge_seeds(runs, schedule.seed)
    if fs.has_split("val") and all(r.records for r in results):
        verdicts = compare_to_reference(
            {r.method: Records(*_stacked(r.records), chosen=np.asarray(r.choices)) for r in results},
            fs.splits["val"][1],
            fs.splits["test"][1],
            better,
            resamples=resamples,
        )
        for r in results:
            r.difference, r.verdicts = verdicts.differences[r.method], verdicts
    mark_duplicates(results, methods)
    return results


def compare_by_cv(
    fs: FeatureSet,
    methods: list[Method],
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    fixed: dict[str, dict[str, Any]] | None = None,
    cv: int = 5,
    fits_per_method: int | None = DEFAULT_FITS_PER_METHOD,
    seeds: int = 1,
    resamples: int = RESAMPLES,
    prefer: str | None = PREFERRED,
) -> list[MethodResult]:
    """:func:`compare` for features without a validation split (any given one is not
    used): every method's setting and epoch chosen by stratified ``cv``-fold
    cross-validation on the training split (:mod:`lort.stage2.crossval`), the choice
    refitted on all of it, then the test split evaluated once. The reference is the method
    with the best fold-mean score (mean over seeds), or ``prefer`` where it is within one
    standard error of the paired fold difference (the rule of
    :class:`~lort.estimator.RetrainingClassifierCV`, so both name the same method); the intervals resample the seeds and
    the test images with the choices held as made (re-making k-fold choices per resample
    would cost ``resamples`` times the folds), and the verdict says so."""

    check_comparison(fits_per_method, seeds)
    schedule = schedule or Schedule()
    fixed = check_fixed(fixed, methods)
    bare = FeatureSet({k: v for k, v in fs.splits.items() if k != "val"}, fs.classes, fs.init_weight, fs.init_bias)
    folds = stratified_folds(bare.splits["train"][1], cv, schedule.seed)
    runs: list[list[MethodResult]] = []
    fold_accs: dict[str, list[np.ndarray]] = {}  # per method, per seed: the choice's balanced accuracy per fold
    for i in range(seeds):
        sched = dataclasses.replace(schedule, seed=schedule.seed + i)
        found = []
        for m in methods:
            t0 = time.perf_counter()
            cvr = cross_validate(m, bare, sched, lrs if m.trains else None, fixed.get(m.name), folds, fits_per_method)
            setting = dict(cvr.settings[cvr.best])
            fold_accs.setdefault(m.name, []).append(cvr.fold_accuracies)
            head, _ = refit(m, bare, sched, setting, cvr.epoch)
            r = MethodResult(
                method=m.name,
                title=m.title,
                hyperparameters=setting,
                epoch=cvr.epoch,
                val={"balanced_acc": float(cvr.best_row[0])},
                time_s=time.perf_counter() - t0,
                head=head,
                search=[
                    {"hyperparameters": s, "cv_balanced_acc": float(cvr.mean[g, :, 0].max())}
                    for g, s in enumerate(cvr.settings)
                ],  # fmt: skip
                fits=len(cvr.settings) * folds.k,
            )
            evaluate_test(r, bare)
            found.append(r)
        runs.append(found)
    results = _merge_seeds(runs, schedule.seed)
    rows = [[np.mean([s["val_balanced_acc"] for s in r.seeds]), 0.0] for r in results]
    names = [r.method for r in results]
    ref, why = one_standard_error(
        names, best_index(rows), [np.mean(fold_accs[n], axis=0) for n in names], prefer
    )  # the folds are the same for every seed: their seed-mean accuracies are paired
    reference = names[ref]
    none = np.zeros((seeds, 1, 0))
    records = {r.method: Records(none, none, r.correct[:, None, :], np.zeros(seeds, dtype=np.int64)) for r in results}
    verdicts = compare_to_reference(
        records, np.zeros(0, dtype=np.int64), fs.splits["test"][1], better, resamples=resamples, reference=reference
    )
    for r in results:
        r.difference, r.verdicts = verdicts.differences[r.method], verdicts
    verdicts.selection, verdicts.reference_rule = folds.describe(), why
    mark_duplicates(results, methods)
    return results
