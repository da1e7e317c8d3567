"""The plan of a stage-2 comparison, made before any work: each method's settings (its
:class:`Job`), how they group into passes of the loop, how many passes train at once, the
floating-point work, the peak memory, and the time that work takes at the matrix-multiply
rate this machine reaches for the same shapes. Nothing here trains; the engine
(:mod:`lort.stage2.engine`) carries a plan out, and nothing below this module imports it.

The loop's work per step and setting is two matrix products of a ``batch x D`` feature
block with a ``K x D`` classifier (the logits, and the weight gradient), so
``4 * batch * D * K`` FLOP (half that for a head whose weights stay fixed, e.g. LWS);
validation scoring adds ``2 * N_val * D * K`` per epoch.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import LortError
from .methods import Method
from .schedule import Schedule


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


def plan_job(method: Method, schedule: Schedule, lrs, fixed, has_val: bool, fits_per_method: int | None = None) -> Job:
    """The settings ``method`` trains (or, post hoc, evaluates).

    With validation data and no ``fits_per_method``: its whole grid x the learning rates. With a
    ``fits_per_method`` (the same for every method): a trained method keeps
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
    budget = fits_per_method
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


def fusion_key(method: Method) -> tuple:
    """Methods with equal keys train in one pass of the loop: the same sampler draws the
    same batches (one seed), and heads of one kind stack along the settings dimension."""
    return (method.sampler, method.head_class) if hasattr(method.head_class, "stack") else (method.name,)


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


# Bytes a trained setting holds beyond the features: its weights, momentum (into which the
# loop folds the weight gradient, so no gradient is held) and the best epoch's copy
# (3 x K x D floats), and per step a few batch x K logit-sized buffers.
COPIES_PER_SETTING = 3
LOGIT_BUFFERS = 6


def setting_bytes(num_classes: int, dim: int, batch_size: int) -> int:
    return 4 * (COPIES_PER_SETTING * num_classes * (dim + 1) + LOGIT_BUFFERS * batch_size * num_classes)


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free now: the GPU's free memory, or the machine's ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass
class Pass:
    methods: list[str]
    settings: int
    sampler: str
    products: int = 2  # matrix products per step: the logits, and the weight gradient where weights train


@dataclass
class StepCosts:
    """Seconds a step of the loop costs beyond its matrix work on this machine, measured on
    a tiny head: ``step`` for a pass with one method's loss, ``loss`` for each further
    method's loss fused into the same pass (small sets are all this overhead)."""

    step: float
    loss: float

    def pass_seconds(self, methods: int) -> float:
        return self.step + self.loss * max(0, methods - 1)


@dataclass
class Plan:
    num_classes: int
    dim: int
    train_rows: int
    val_rows: int
    epochs: int
    batch_size: int
    passes: list[Pass] = field(default_factory=list)
    max_settings: int = 0
    budget_bytes: int = 0
    feature_bytes: int = 0
    seeds: int = 1  # the whole comparison is repeated per seed
    fits_per_method: int | None = None  # None: every method's whole grid
    workers: int = 1  # passes trained at once (concurrent_passes)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_rows / self.batch_size)

    @property
    def settings(self) -> int:
        return sum(p.settings for p in self.passes)

    def pass_flop(self, settings: int, products: int = 2) -> float:
        k, d = self.num_classes, self.dim
        train = 2.0 * products * self.batch_size * d * k * settings * self.steps_per_epoch * self.epochs
        score = 2.0 * self.val_rows * d * k * settings * self.epochs
        return train + score

    @property
    def flop(self) -> float:
        return self.seeds * sum(self.pass_flop(p.settings, p.products) for p in self.passes)

    @property
    def peak_bytes(self) -> int:
        widest = max((p.settings for p in self.passes), default=0)
        return self.feature_bytes + widest * setting_bytes(self.num_classes, self.dim, self.batch_size)

    @property
    def steps(self) -> int:
        """Optimisation steps of one pass (all seeds)."""
        return self.steps_per_epoch * self.epochs * self.seeds

    def predicted_seconds(self, rate: float, costs: StepCosts | None = None) -> float:
        """The matrix work at ``rate`` FLOP/s plus, given ``costs``, every pass's per-step
        overhead: a lower bound (``costs`` are measured with the cheapest loss)."""
        overhead = 0.0 if costs is None else self.steps * sum(costs.pass_seconds(len(p.methods)) for p in self.passes)
        return self.flop / rate + overhead / self.workers

    def describe(self, rate: float | None = None, costs: StepCosts | None = None) -> str:
        lines = [
            f"plan: {self.settings} settings in {len(self.passes)} passes of the loop, {self.epochs} epochs x "
            f"{self.steps_per_epoch} steps (batch {self.batch_size}); K = {self.num_classes}, D = {self.dim}, "
            f"{self.train_rows} training rows"
            + (f"; all of it for each of {self.seeds} seeds" if self.seeds > 1 else ""),
            f"      work {self.flop:.3g} FLOP; peak memory ~{self.peak_bytes / 2**20:,.0f} MiB "
            f"(features {self.feature_bytes / 2**20:,.0f} MiB + the widest pass; budget "
            f"{self.budget_bytes / 2**20:,.0f} MiB, "
            + (
                "room for every setting at once)"
                if self.max_settings >= self.settings
                else f"room for {self.max_settings} settings at once)"
            ),
        ]
        for p in self.passes:
            lines.append(f"      pass: {', '.join(p.methods)} ({p.settings} settings, {p.sampler} sampling)")
        if self.workers > 1:
            lines.append(f"      small passes: {self.workers} at a time, each in its own process on one thread")
        if rate and costs is not None:
            total = self.predicted_seconds(rate, costs)
            lines.append(
                f"      predicted: at least {total:,.0f} s = {self.flop / rate:,.0f} s of matrix work at this machine's "
                f"same-shape matrix-multiply rate ({rate / 1e9:.1f} GFLOP/s) + {total - self.flop / rate:,.0f} s of "
                f"per-step overhead{f' over {self.workers} passes at a time' if self.workers > 1 else ''} ({1e3 * costs.step:.2f} ms a step, {1e3 * costs.loss:.2f} ms per further method "
                "in a pass, measured with plain cross-entropy: heavier losses and heads cost more)"
            )
        elif rate:
            lines.append(
                f"      predicted: {self.flop / rate:,.0f} s of matrix work at this machine's same-shape "
                f"matrix-multiply rate ({rate / 1e9:.1f} GFLOP/s), plus per-step overhead"
            )
        return "\n".join(lines)


def make_plan(
    methods: list[Method],
    fs,
    schedule: Schedule,
    lrs,
    fixed: dict | None = None,
    budget_bytes: int | None = None,
    device: torch.device | str = "cpu",
    fits_per_method: int | None = None,
    seeds: int = 1,
) -> Plan:
    """The plan for ``compare(fs, methods, ...)``. ``budget_bytes`` is the memory stage 2
    may use, features included (default: the features plus 90% of what is free now); it
    caps the settings trained side by side; ``fits_per_method`` is the fits per method and ``seeds``
    the repeats of the comparison (see :func:`lort.stage2.compare.compare`). A budget too small for one setting is a
    LortError that gives the figures."""
    x, _ = fs.splits["train"]
    has_val = fs.has_split("val")
    k, d = fs.num_classes, x.shape[1]
    feature_bytes = sum(int(a.nbytes) + int(b.nbytes) for a, b in fs.splits.values())
    per = setting_bytes(k, d, schedule.batch_size)
    if budget_bytes is None:  # the features are loaded already: what is free now is for the classifiers
        memory = feature_bytes + int(0.9 * available_memory(device))
    else:
        memory = int(budget_bytes)
    room = memory - feature_bytes
    if per > room:
        raise LortError(
            f"stage 2 needs {per / 2**20:,.0f} MiB for one setting (K = {k}, D = {d}) and "
            f"{feature_bytes / 2**20:,.0f} MiB of features; the memory budget leaves {max(room, 0) / 2**20:,.0f} MiB. "
            "Free memory, or use a machine or GPU with more"
        )
    max_settings = max(1, room // per)
    jobs: list[Job] = [plan_job(m, schedule, lrs, (fixed or {}).get(m.name), has_val, fits_per_method) for m in methods]
    plan = Plan(
        num_classes=k,
        dim=d,
        train_rows=len(x),
        val_rows=len(fs.splits["val"][1]) if has_val else 0,
        epochs=schedule.epochs,
        batch_size=schedule.batch_size,
        max_settings=max_settings,
        budget_bytes=memory,
        feature_bytes=feature_bytes,
        seeds=seeds,
        fits_per_method=fits_per_method,
    )
    for units in passes(jobs, max_settings):
        names = list(dict.fromkeys(job.method.name for job, _ in units))
        method = units[0][0].method
        products = 2 if method.head_class.trains_weight else 1
        plan.passes.append(Pass(names, sum(len(i) for _, i in units), method.sampler, products))
    plan.workers = concurrent_passes([p.settings for p in plan.passes], k, d, device)
    return plan


def matmul_rate(plan: Plan, device: torch.device | str = "cpu", seconds: float = 0.3, rounds: int = 1) -> float:
    """FLOP/s that ``torch.mm`` reaches here for the loop's shapes: the logits of the widest
    pass (batch x D times D x G*K) and its weight gradient (G*K x batch times batch x D).
    The best of ``rounds`` rounds of at least ``seconds`` each (benchmarks take several: the
    rate the machine can reach for these shapes, not one slowed by a neighbour's burst;
    ``lort compare`` takes one, to keep its start quick)."""
    device = torch.device(device)
    g = max((p.settings for p in plan.passes), default=1)
    b, d, k = plan.batch_size, plan.dim, plan.num_classes
    x = torch.randn(b, d, device=device)
    w = torch.randn(g * k, d, device=device)
    grad = torch.randn(g * k, b, device=device)
    flop, best = 4.0 * b * d * k * g, 0.0
    torch.mm(x, w.T), torch.mm(grad, x)  # warm-up
    for _ in range(rounds):
        spent, calls = 0.0, 0
        while spent < seconds or calls < 3:
            t0 = time.perf_counter()
            torch.mm(x, w.T)
            torch.mm(grad, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent += time.perf_counter() - t0
            calls += 1
        best = max(best, flop * calls / spent)
    return best


def step_costs(device: torch.device | str = "cpu", steps: int = 60) -> StepCosts:
    """:class:`StepCosts` measured here: the loop on a tiny head (K = 2, D = 2, one setting
    per method) with one, then three cross-entropy losses fused (they merge into one
    computation, as the losses of the cross-entropy family do in a pass), ``steps`` steps
    each; the best of three tries (the machine's speed drifts)."""
    from .heads import LinearHead
    from .losses import FusedLoss, SoftCrossEntropy
    from .trainer import fit_head

    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64 * steps, 2, generator=gen).to(device)
    y = (torch.arange(64 * steps) % 2).to(device)
    schedule = Schedule(epochs=1)

    def timed(methods: int) -> float:
        loss = FusedLoss([SoftCrossEntropy(1, 2, device=device) for _ in range(methods)], [1] * methods)

        best = float("inf")
        for _ in range(3):
            head = LinearHead(torch.zeros(2, 2, device=device), torch.zeros(2, device=device), methods)
            t0 = time.perf_counter()
            fit_head(head, x, y, loss, schedule)
            best = min(best, (time.perf_counter() - t0) / steps)
        return best

    one, three = timed(1), timed(3)
    return StepCosts(step=one, loss=max(0.0, (three - one) / 2))
