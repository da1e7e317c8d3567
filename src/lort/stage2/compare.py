"""Fit stage-2 methods on one frozen representation, choose every hyperparameter and the
epoch on the validation split, then evaluate the test split once."""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..analysis.metrics import accuracy_report, grouped_balanced_accuracy, prediction_report
from ..analysis.uncertainty import Difference, paired_bootstrap
from ..data.features import FeatureSet
from ..errors import LortError
from ..runtime.heap import return_large_blocks
from .heads import Head, LinearHead, Standardised, centre_and_spread
from .losses import FusedLoss, SoftCrossEntropy
from .methods import METHODS, FitContext, Method
from .schedule import DEFAULT_BUDGET, DEFAULT_LRS, Schedule, check_comparison
from .trainer import fit_head


def head_balanced_accuracy(
    head: Head, x: torch.Tensor, labels: torch.Tensor, num_classes: int, budget: int = 1 << 22
) -> torch.Tensor:
    """Balanced accuracy of every classifier of ``head`` on ``x``: the first column of
    :func:`head_validation_scores`."""
    return head_validation_scores(head, x, labels, num_classes, budget)[:, 0]


def head_validation_scores(
    head: Head, x: torch.Tensor, labels: torch.Tensor, num_classes: int, budget: int = 1 << 22
) -> torch.Tensor:
    """``(G, 2)``: each classifier's balanced accuracy on ``x``, then minus its
    class-balanced log-loss (the mean over classes of the mean negative log-likelihood of
    their samples), compared in that order: the log-loss breaks the ties of balanced
    accuracy, which on a small validation split moves in coarse steps. Chosen by test
    regret over the LORT suite (results/lort_default/selection.md). Computed in row chunks
    so that at most ``budget`` logits (G x rows x K) exist at once: the validation split of
    a large dataset scored by a whole grid never needs G full logit matrices."""
    g = head.groups()
    rows = max(1, budget // max(1, g * num_classes))
    preds, nll = [], labels.new_zeros(g, num_classes, dtype=torch.float32)  # x may be a source like Standardised
    for i in range(0, len(x), rows):
        logits, y = head(x[i : i + rows]).float(), labels[i : i + rows]
        preds.append(logits.argmax(2))
        picked = F.log_softmax(logits, dim=2).gather(2, y.expand(g, -1).unsqueeze(2)).squeeze(2)
        nll.index_add_(1, y, -picked)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    log_loss = (nll[:, present] / counts[present]).mean(1).nan_to_num(nan=math.inf)
    accuracy = grouped_balanced_accuracy(torch.cat(preds, dim=1), labels, num_classes)
    return torch.stack([accuracy, -log_loss], dim=1)


def best_epoch(curve: np.ndarray) -> int:
    """Index of the best row of ``(E,)`` or ``(E, C)`` validation scores, compared in
    column order (the first row on full ties)."""
    key = curve.reshape(len(curve), -1)
    return max(range(len(key)), key=lambda e: (tuple(key[e]), -e))


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
    difference: Difference | None = None  # test accuracy minus the best method's, with its interval
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
            "diff_to_best": None if d is None else round(100 * d.diff, 2),
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


CE_INIT_LRS = (5e-3, 5e-2, 0.5)


def ce_classifier(fs: FeatureSet, schedule: Schedule, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain cross-entropy classifier fitted from zero on the training features, for
    methods that warm-start when the features carry no classifier (``init_weight``).
    It is fitted on the features centred on their training mean and divided by their
    root-mean-square norm about it, then written back as the equivalent classifier of the
    raw features, so that its learning rates mean the same on features of any scale. Its
    learning rate (of ``CE_INIT_LRS``) and epoch are chosen on validation when there is a
    validation split, else the middle rate and the last epoch are used."""
    x, y = (torch.as_tensor(a, device=device) for a in fs.splits["train"])
    center, spread = centre_and_spread(x)
    k = fs.num_classes
    has_val = fs.has_split("val")
    lrs = CE_INIT_LRS if has_val else CE_INIT_LRS[1:2]
    xv, yv = (torch.as_tensor(a, device=device) for a in fs.splits["val"]) if has_val else (None, None)
    xv = None if xv is None else Standardised(xv, center, spread)
    head, curves = fit_head(
        LinearHead(x.new_zeros(k, x.shape[1]), x.new_zeros(k), len(lrs)),
        Standardised(x, center, spread),
        y,
        SoftCrossEntropy(len(lrs), k, device=device),
        dataclasses.replace(schedule, epochs=max(schedule.epochs, 1)),
        score_fn=(lambda h: head_balanced_accuracy(h, xv, yv, k)) if has_val else None,
        lr=list(lrs),
        num_classes=k,
    )
    g = int(np.argmax(curves.max(axis=0))) if len(curves) else 0
    w, b = head.linear_params()
    fs.meta["init_classifier"] = (
        f"cross-entropy fit from zero on standardised features (lr {lrs[g]:g}), no classifier was given"
    )
    weight = w[g] / spread
    return weight.clone(), (b[g] - weight @ center).clone()


def stage2_device(device=None) -> torch.device:
    """The device stage 2 runs on: ``device`` if given, else the CPU."""
    return torch.device(device if device is not None else "cpu")


def context(fs: FeatureSet, schedule: Schedule, seed: int = 0, device=None) -> FitContext:
    """What the methods see, with the training features moved once to ``device``."""
    return_large_blocks()  # short-lived blocks of a large stage 2 go back to the OS when freed
    device = stage2_device(device)
    x, y = fs.splits["train"]
    k = fs.num_classes
    if fs.init_weight is not None:
        w = torch.as_tensor(fs.init_weight, dtype=torch.float32, device=device)
        b = torch.as_tensor(
            fs.init_bias if fs.init_bias is not None else np.zeros(k), dtype=torch.float32, device=device
        )
    else:
        w, b = ce_classifier(fs, schedule, device)
    return FitContext(
        x=torch.as_tensor(x, device=device),
        y=torch.as_tensor(y, device=device),
        counts=fs.train_counts,
        init_weight=w,
        init_bias=b,
        epochs=schedule.epochs,
        seed=seed,
        given_classifier=fs.init_weight is not None,
    )


def head_device(head: Head) -> torch.device:
    return next(iter(head.state_dict().values())).device


def logit_blocks(head: Head, x, budget: int = 1 << 22):
    """The ``(rows, K)`` logits of a single-classifier head for ``x``, block of rows after
    block: a head's transformed inputs (e.g. centred features) and its logits never exist
    for all rows at once."""
    x = torch.as_tensor(x, dtype=torch.float32, device=head_device(head))
    rows = max(1, budget // max(1, x.shape[1] if x.dim() == 2 else 1))
    with torch.no_grad():
        for i in range(0, max(len(x), 1), rows):
            yield head.predict_logits(x[i : i + rows]).cpu().numpy()


def logits_of(head: Head, x) -> np.ndarray:
    """``(N, K)`` logits of a single-classifier head (computed in row blocks)."""
    blocks = logit_blocks(head, x)
    first = next(blocks)
    if len(first) == len(x):
        return first
    out = np.empty((len(x), first.shape[1]), dtype=first.dtype)
    out[: len(first)] = first
    start = len(first)
    for block in blocks:
        out[start : start + len(block)] = block
        start += len(block)
    return out


@dataclass
class Job:
    """One method's planned work: the settings it trains (or, post hoc, evaluates)."""

    method: Method
    settings: list[dict[str, Any]]
    seconds: float = 0.0


def spread(points: list, n: int, keep: int | None = None) -> list:
    """``n`` of ``points``, evenly spaced by position (the first and the last among them),
    with ``points[keep]`` (a default) in place of the nearest one chosen."""
    if n >= len(points):
        return list(points)
    chosen = [int(round(i)) for i in np.linspace(0, len(points) - 1, n)]
    if keep is not None and keep not in chosen:
        chosen[int(np.argmin([abs(c - keep) for c in chosen]))] = keep
    return [points[i] for i in sorted(set(chosen))]


def budget_lrs(lrs: list[float], n: int) -> list[float]:
    """``n`` learning rates: ``lrs`` itself when it has ``n``, else ``n`` values spaced
    geometrically over its range (rounded to 3 significant digits)."""
    if n == len(lrs) or min(lrs) == max(lrs):
        return list(lrs) if n == len(lrs) else [lrs[0]]
    return [float(f"{v:.3g}") for v in np.geomspace(min(lrs), max(lrs), n)]


def plan_job(method: Method, schedule: Schedule, lrs, fixed, has_val: bool, budget: int | None = None) -> Job:
    """The settings ``method`` trains (or, post hoc, evaluates).

    With validation data and no ``budget``: its whole grid x the learning rates. With a
    ``budget`` (fits per method, the same for every method): a trained method keeps
    ``p = min(grid size, budget // len(lrs))`` grid points evenly spread over its grid (its
    default among them) and ``budget // p`` learning rates (``lrs``, or as many spread
    over their range), so that a method without hyperparameters gets more learning rates
    instead of fewer fits; a post-hoc method evaluates ``budget`` grid points. Values the
    user fixes are all kept. With a single learning rate every method runs at its
    default (one fit each). Without validation data: the method's defaults and the
    schedule's lr, one fit."""
    points = method.settings(fixed, search=has_val)
    if not has_val:
        points = points[:1]
        return Job(method, points if not method.trains else [hp | {"lr": schedule.lr} for hp in points])
    lr_values = list(lrs) if lrs else [schedule.lr]
    if budget is not None and not fixed:
        default = method.settings(None, search=False)[0] if points else None
        keep = points.index(default) if default in points else None
        if min(lr_values) == max(lr_values):  # one learning rate: no method can have more fits than one
            budget = 1
        if not method.trains:
            return Job(method, spread(points, budget, keep))
        p = min(len(points), max(1, budget // len(lr_values)))
        points = spread(points, p, keep)
        lr_values = budget_lrs(lr_values, max(1, budget // len(points)))
    if not method.trains:
        return Job(method, points)
    return Job(method, [hp | {"lr": lr} for hp in points for lr in lr_values])


@dataclass
class Part:
    """Some settings of one job, with the pieces they plug into the loop."""

    job: Job
    indices: list[int]  # positions in job.settings
    head: Head
    loss: Any
    max_norm: list[float] | None
    weight_decay: list[float] | None
    lr: list[float]


def build_part(job: Job, indices: list[int], ctx: FitContext) -> Part:
    settings = [job.settings[i] for i in indices]
    m = job.method
    return Part(
        job,
        indices,
        head=m.build_head(ctx, settings),
        loss=m.loss(ctx, settings),
        max_norm=m.max_norm(ctx, settings),
        weight_decay=m.weight_decay(settings),
        lr=[p["lr"] for p in settings],
    )


def fusion_key(method: Method) -> tuple:
    """Methods with equal keys train in one pass of the loop: the same sampler draws the
    same batches (one seed), and heads of one kind stack along the settings dimension."""
    return (method.sampler, method.head_class) if hasattr(method.head_class, "stack") else (method.name,)


def _per_setting(parts: list[Part], attr: str, default: float) -> list[float] | None:
    values = [getattr(p, attr) for p in parts]
    if all(v is None for v in values):
        return None
    return [x for p, v in zip(parts, values, strict=True) for x in (v if v is not None else [default] * len(p.indices))]


def passes(jobs: list[Job], max_settings: int) -> list[list[tuple[Job, list[int]]]]:
    """The passes of the loop: trained jobs grouped by :func:`fusion_key` (in order of first
    appearance), each group cut into chunks of at most ``max_settings`` settings; a pass is
    a list of ``(job, setting indices)``."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.method.trains:
            groups.setdefault(fusion_key(job.method), []).append(job)
    out = []
    for members in groups.values():
        pairs = [(job, i) for job in members for i in range(len(job.settings))]
        for start in range(0, len(pairs), max_settings):
            chunk, units = pairs[start : start + max_settings], []
            for job, i in chunk:
                if units and units[-1][0] is job:
                    units[-1][1].append(i)
                else:
                    units.append((job, [i]))
            out.append(units)
    return out


SMALL_PASS = 1 << 18  # weights (settings x K x D) below which a pass is bound by per-step overhead, not arithmetic


def concurrent_passes(pass_settings: list[int], k: int, d: int, device, cached: bool = True) -> int:
    """How many passes (of ``pass_settings`` settings each, K = ``k``, D = ``d``) to train
    at once, each in a forked process on one thread:
    on a CPU with several threads where fork exists, when every pass is small enough that
    its steps cost operation overhead, not arithmetic (settings x K x D <= ``SMALL_PASS``),
    and the features are cached (no backbone in the loop). Tiny operations gain nothing
    from several threads; several passes at once use the cores. Large passes keep every
    thread on their matrix products (1: no concurrency)."""
    threads = torch.get_num_threads()
    if (
        torch.device(device).type != "cpu"
        or not cached
        or threads < 2
        or len(pass_settings) < 2
        or "fork" not in multiprocessing.get_all_start_methods()
        or max(pass_settings) * k * d > SMALL_PASS
    ):
        return 1
    return min(threads, len(pass_settings))


@dataclass
class PassWork:
    """One pass of the loop, assembled: its parts, the stacked head and the loop's arguments."""

    parts: list[Part]
    head: Head
    kwargs: dict
    names: str
    settings: int
    curves: np.ndarray | None = None
    seconds: float = 0.0


_INHERITED: dict[str, Any] = {}  # what forked pass workers inherit: the assembled passes and the loop's arguments


def _fit_pass(work: PassWork, ctx: FitContext, schedule: Schedule, score_fn, source, on_step=None) -> None:
    t0 = time.perf_counter()
    work.head, work.curves = fit_head(
        work.head, source, ctx.y, schedule=schedule, score_fn=score_fn, on_step=on_step, **work.kwargs
    )
    work.seconds = time.perf_counter() - t0


def _forked_pass(i: int):
    torch.set_num_threads(1)  # one core per pass
    work = _INHERITED["work"][i]
    _fit_pass(work, *_INHERITED["args"])
    return work.head.state_dict(), work.curves, work.seconds


def train_jobs(
    jobs: list[Job],
    ctx: FitContext,
    schedule: Schedule,
    score_fn,
    train_source=None,
    progress=None,
    max_settings: int | None = None,
    bar=None,
) -> dict[int, list[tuple[Head, int, np.ndarray]]]:
    """Train every trained job in :func:`passes`: settings that share a sampler and a head
    kind run side by side in ONE pass of the loop, at most ``max_settings`` at once (the
    memory budget). Each setting's update depends only on its own loss and the batches are
    the same in every pass, so each result equals its separate fit. Small passes run
    concurrently in forked processes (:func:`concurrent_passes`; the bar then advances pass
    by pass). Returns, per job, for each of its settings ``(head, index of the setting's
    classifier in it, validation curve)``. ``bar`` (a tqdm bar counting setting-steps)
    advances with every step."""
    plan = passes(jobs, max_settings or 1 << 30)
    source = ctx.x if train_source is None else train_source

    def assemble(units) -> PassWork:
        parts = [build_part(job, idx, ctx) for job, idx in units]
        # losses of the cross-entropy family side by side merge into one computation (FusedLoss)
        parts.sort(key=lambda p: not isinstance(p.loss, SoftCrossEntropy))
        head = parts[0].head if len(parts) == 1 else type(parts[0].head).stack([p.head for p in parts])
        kwargs = dict(
            loss_fn=FusedLoss([p.loss for p in parts], [len(p.indices) for p in parts]),
            sampler=units[0][0].method.sampler,
            max_norm=_per_setting(parts, "max_norm", float("inf")),
            lr=_per_setting(parts, "lr", schedule.lr),
            weight_decay=_per_setting(parts, "weight_decay", schedule.weight_decay),
            num_classes=ctx.num_classes,
        )
        names = ", ".join(dict.fromkeys(job.method.name for job, _ in units))
        return PassWork(parts, head, kwargs, names, sum(len(p.indices) for p in parts))

    def announce(work: PassWork) -> None:
        if progress:
            progress(work.names)
        if bar is not None:
            bar.set_description(f"stage 2: {work.names}")

    k, d = ctx.init_weight.shape
    workers = concurrent_passes([sum(len(i) for _, i in u) for u in plan], k, d, ctx.device, train_source is None)
    if workers > 1:
        t0 = time.perf_counter()
        done = [assemble(units) for units in plan]
        order = sorted(range(len(done)), key=lambda i: -done[i].settings)  # the longest first
        _INHERITED.update(work=done, args=(ctx, schedule, score_fn, source))
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for i, (state, curves, seconds) in zip(order, pool.imap(_forked_pass, order), strict=True):
                    announce(done[i])
                    done[i].head.load_state_dict(state)
                    done[i].curves, done[i].seconds = curves, seconds
                    if bar is not None:
                        bar.update(done[i].settings * schedule.steps(len(ctx.y)))
        finally:
            _INHERITED.clear()
        wall, busy = time.perf_counter() - t0, sum(w.seconds for w in done)
        for w in done:  # the passes overlapped: each gets its share of the wall time
            w.seconds *= wall / max(busy, 1e-9)
    else:
        done = []
        for units in plan:
            work = assemble(units)
            announce(work)
            step = None if bar is None else functools.partial(bar.update, work.settings)
            _fit_pass(work, ctx, schedule, score_fn, source, step)
            done.append(work)
    cells: dict[int, dict[int, tuple[Head, int, np.ndarray]]] = {}
    for work in done:
        g = 0
        for part in work.parts:
            part.job.seconds += work.seconds * len(part.indices) / work.settings  # the pass's time, shared
            for i in part.indices:
                cells.setdefault(id(part.job), {})[i] = (work.head, g, work.curves[:, g])  # empty without val
                g += 1
    return {key: [found[i] for i in range(len(found))] for key, found in cells.items()}


def selection_key(record: dict, g: int) -> tuple:
    """Order of a method's settings: validation balanced accuracy, then the lower
    class-balanced log-loss, then the earlier setting."""
    loss = record.get("val_log_loss")
    return (record["val_balanced_acc"] or 0.0, -(loss if loss is not None else 0.0), -g)


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
            e = best_epoch(key) if len(key) else None
            search.append(
                {
                    "hyperparameters": point,
                    "epoch": schedule.epochs if e is None else e + 1,
                    "val_balanced_acc": None if e is None else float(key[e, 0]),
                    "val_log_loss": None if e is None or key.shape[1] < 2 else -float(key[e, 1]),
                    "curve": [round(float(c), 5) for c in key[:, 0]],
                }
            )
        best = max(range(len(settings)), key=lambda g: selection_key(search[g], g))
        head, index, _ = trained[best]
        chosen = method.posthoc(head.select(index), ctx, settings[best])
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
        best = max(range(len(settings)), key=lambda g: selection_key(search[g], g))
        chosen = heads[best]
    point, epoch = search[best]["hyperparameters"], search[best]["epoch"]
    val = fs.splits.get("val")
    val_report = accuracy_report(logits_of(chosen, val[0]), val[1], fs.train_counts) if has_val else None
    if not has_val:
        point = point | {"note": "no validation split: defaults, nothing searched"}
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
    )


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
    budget: int | None = None,
) -> list[MethodResult]:
    """Plan every method (``budget``: fits per method, see :func:`plan_job`), train them (fused where they share a sampler and head kind, at
    most ``max_settings`` side by side), choose each one's setting and epoch on
    validation. Test data is never touched here."""
    xv, yv = _validation(fs, ctx)
    k = fs.num_classes
    score_fn = (lambda h: head_validation_scores(h, xv, yv, k)) if xv is not None else None
    jobs = [plan_job(m, schedule, lrs, fixed.get(m.name), xv is not None, budget) for m in methods]
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
    validation balanced accuracy (the first on ties). Without a validation split every
    hyperparameter not fixed takes its default (the source's, where it publishes one), the
    schedule's lr and the last epoch are used, and the result says so. Test data is
    never touched here. ``train_source`` replaces the cached training features (full
    mode: :class:`lort.stage2.full.BackboneFeatures`). ``device`` (default CPU) is where
    the features are moved once and every classifier trains, unless ``ctx`` gives it."""
    schedule = schedule or Schedule()
    ctx = ctx or context(fs, schedule, schedule.seed, device)
    return fit_methods([method], fs, schedule, lrs, {method.name: fixed} if fixed else {}, ctx, train_source)[0]


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


def _seed_record(seed: int, r: MethodResult) -> dict:
    test = {k: r.test.get(k) for k in ("acc", "balanced_acc", "many", "medium", "few")} if r.test else None
    return {
        "seed": seed,
        "hyperparameters": r.hyperparameters,
        "epoch": r.epoch,
        "val_balanced_acc": None if r.val is None else r.val.get("balanced_acc"),
        "test": test,
    }


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
    budget: int | None = DEFAULT_BUDGET,
    seeds: int = 1,
) -> list[MethodResult]:
    """Fit every method (selection on validation), then evaluate each on test once.
    ``fixed`` maps a method name to hyperparameters it fixes (see :func:`fit_method`);
    ``budget``: fits per method, equal for all (:func:`plan_job`; None: every method's
    whole grid); ``seeds``: stage 2 is repeated with seeds ``schedule.seed + i`` (batch
    order, re-initialised heads) and each result carries every seed's choice and test
    accuracy, their mean, and its paired bootstrap difference to the best method
    (:mod:`lort.analysis.uncertainty`); the heads returned are the first seed's.
    ``device``: where the features go (once) and the classifiers train; default CPU;
    ``memory_budget`` (bytes, default what is free) caps the settings trained side by side
    (:func:`lort.stage2.plan.make_plan`; a ``plan`` made before may be given);
    ``show_progress`` draws one bar over the whole comparison, with its ETA."""
    from .plan import make_plan

    check_comparison(budget, seeds)
    schedule = schedule or Schedule()
    fixed = check_fixed(fixed, methods)
    plan = plan or make_plan(methods, fs, schedule, lrs, fixed, memory_budget, stage2_device(device), budget, seeds)
    if (plan.budget, plan.seeds, plan.epochs) != (budget, seeds, schedule.epochs):
        raise LortError(
            f"the plan given was made for budget {plan.budget}, {plan.seeds} seeds, {plan.epochs} epochs; "
            f"this comparison has budget {budget}, {seeds} seeds, {schedule.epochs} epochs"
        )
    total = plan.settings * plan.steps_per_epoch * plan.epochs * plan.seeds
    runs: list[list[MethodResult]] = []
    with tqdm(total=total, unit="step", unit_scale=True, desc="stage 2", disable=not show_progress) as bar:
        for i in range(seeds):
            sched = dataclasses.replace(schedule, seed=schedule.seed + i)
            ctx = context(fs, sched, sched.seed, device)
            found = fit_methods(
                methods, fs, sched, lrs, fixed, ctx, train_source, progress, plan.max_settings, bar, budget
            )
            for r in found:
                evaluate_test(r, fs)
            runs.append(found)
    results = runs[0]
    for j, r in enumerate(results):
        same = [run[j] for run in runs]
        r.seeds = [_seed_record(schedule.seed + i, x) for i, x in enumerate(same)]
        r.correct = np.concatenate([x.correct for x in same])
        r.time_s = sum(x.time_s for x in same)
    diffs = paired_bootstrap({r.method: r.correct for r in results}, fs.splits["test"][1])
    for r in results:
        r.difference = diffs[r.method]
    mark_duplicates(results, methods)
    return results
