"""The stage-2 engine: carries out the passes of a plan (:mod:`lort.stage2.plan`).

Settings that share a sampler and a head kind train side by side in ONE pass of the
loop (:func:`lort.stage2.trainer.fit_head`); small passes train concurrently in forked
processes. Each setting's update depends only on its own loss and the batches are the same
in every pass, so each result is its separate fit's (to the last bits of the BLAS
arithmetic, which may sum in another order when more settings share a product).
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .heads import Head
from .losses import FusedLoss, SoftCrossEntropy
from .methods import FitContext
from .plan import Job, concurrent_passes, passes
from .schedule import Schedule
from .trainer import fit_head


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


def _per_setting(parts: list[Part], attr: str, default: float) -> list[float] | None:
    values = [getattr(p, attr) for p in parts]
    if all(v is None for v in values):
        return None
    return [x for p, v in zip(parts, values, strict=True) for x in (v if v is not None else [default] * len(p.indices))]


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
