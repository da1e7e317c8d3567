"""How sure a comparison is: every method against the one validation would pick.

A user cannot pick a method on test, so the **reference** of a leaderboard is the method
with the best validation score (the mean over stage-2 seeds of its chosen setting's
validation balanced accuracy, ties by the class-balanced log-loss: the comparison's own
selection rule). Each method's test accuracy minus the reference's is estimated with a
**two-level paired bootstrap** that carries every source of variation the comparison
varies, with the same draw for every method:

1. the stage-2 seeds are resampled (with replacement), so a method's seed spread widens
   its interval;
2. the validation images are resampled within each class, and every method's choice of
   setting is made again from its recorded per-setting validation results (so a lucky
   pick on a small validation split is not called a real difference), and so is the
   reference;
3. the test images are resampled within each class.

Left out, and said so in every verdict: the choice of each setting's *epoch*, which is
kept as made on the whole validation split (re-making it would need every epoch's test
predictions), and the stage-1 training (one backbone).

The claims of one leaderboard hold together: the intervals are **max-statistic
simultaneous intervals** (each difference studentised by its bootstrap standard error;
the level's quantile of the largest studentised deviation over all methods scales every
interval), so that with probability ``level`` every interval covers its difference at
once. A method is *below* (or *above*) the reference only when its whole interval is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
PROCEDURE_FIXED = (
    "paired bootstrap (stage-2 seeds, then test images within each class; the choices held as made), "
    "max-statistic simultaneous {level:.0%} intervals over all methods"
)
PROCEDURE = (
    "two-level paired bootstrap (stage-2 seeds, then validation and test images within each class; "
    "every choice of setting and the reference re-made on each resampled validation split), "
    "max-statistic simultaneous {level:.0%} intervals over all methods"
)


@dataclass
class Records:
    """One method's recorded candidates, seed by seed: for each of its ``G`` settings (at
    the epoch chosen on the whole validation split), which validation and test images it
    got right and each validation image's negative log-likelihood; ``chosen[s]`` is the
    setting seed ``s`` chose on the whole validation split."""

    val_correct: np.ndarray  # (S, G, n_val) bool
    val_nll: np.ndarray  # (S, G, n_val) float
    test_correct: np.ndarray  # (S, G, n_test) bool
    chosen: np.ndarray  # (S,) int

    def __post_init__(self) -> None:
        self.val_correct = np.asarray(self.val_correct, dtype=bool)
        self.val_nll = np.asarray(self.val_nll, dtype=np.float64)
        self.test_correct = np.asarray(self.test_correct, dtype=bool)
        self.chosen = np.asarray(self.chosen, dtype=np.int64)
        s, g, _ = self.test_correct.shape
        if self.val_correct.shape[:2] != (s, g) or self.val_nll.shape != self.val_correct.shape:
            raise ValueError("validation and test records must have the same seeds and settings")
        if self.chosen.shape != (s,) or (self.chosen < 0).any() or (self.chosen >= g).any():
            raise ValueError(f"chosen must give one setting in [0, {g}) per seed")


@dataclass
class Difference:
    """A method's test accuracy minus the reference's (fractions), with its simultaneous
    interval and tier."""

    reference: str
    diff: float
    low: float
    high: float
    tier: str  # reference | below the reference | above the reference | indistinguishable


@dataclass
class Verdicts:
    reference: str  # the method validation picks
    test_best: str  # the highest test accuracy (information only)
    differences: dict[str, Difference]
    procedure: str
    resamples: int
    seeds: int
    varied: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    reference_share: float = 1.0  # fraction of resamples in which validation picks the reference again
    selection: str = "validation"  # what chose: "validation" or "cross-validation" (the reference then fixed)
    reference_rule: str = ""  # how the reference was chosen among close methods, where a rule decided it

    def describe(self) -> str:
        """What the intervals carry and what they leave out, in one sentence."""
        text = f"Intervals: {self.procedure}; {self.resamples} resamples; varied: {', '.join(self.varied)}"
        if self.left_out:
            text += f"; not varied: {', '.join(self.left_out)}"
        return text + "."


def _strata(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image weights whose sum over a class's images is 1 / (classes present): a
    weighted sum of per-image values is the mean over classes of the class means."""
    strata = _strata(labels)
    w = np.zeros(len(labels))
    for members in strata:
        w[members] = 1.0 / (len(members) * len(strata))
    return w


def _resampled_weights(rng: np.random.Generator, strata: list[np.ndarray], n: int, b: int) -> np.ndarray:
    """``(b, n)`` counts: each class's images drawn with replacement, as many as it has."""
    out = np.zeros((b, n))
    rows = np.arange(b)[:, None]
    for members in strata:
        draw = members[rng.integers(0, len(members), size=(b, len(members)))]
        np.add.at(out, (np.broadcast_to(rows, draw.shape), draw), 1.0)
    return out


def _seed_scores(rec: Records, val_w: np.ndarray) -> np.ndarray:
    """``(b, S, G, 2)`` score rows (balanced accuracy, minus the class-balanced log-loss)
    of every seed's settings under validation weights ``val_w`` ``(b, n_val)`` (each
    image's count times its class weight)."""
    s, g, n = rec.val_correct.shape
    acc = val_w @ rec.val_correct.reshape(s * g, n).T.astype(np.float64)
    nll = val_w @ rec.val_nll.reshape(s * g, n).T
    return np.stack([acc, -nll], axis=-1).reshape(len(val_w), s, g, 2)


def _choose_rows(scores: np.ndarray, better: Callable) -> np.ndarray:
    """Index of the best along axis -2 of ``(..., G, C)`` score rows, scanning in order
    and moving only when ``better`` says so (the comparison's selection rule)."""
    lead, g = scores.shape[:-2], scores.shape[-2]
    flat = scores.reshape(-1, g, scores.shape[-1])
    best = np.zeros(len(flat), dtype=np.int64)
    for i in range(1, g):
        wins = np.asarray(better(flat[:, i], flat[np.arange(len(flat)), best]), dtype=bool)
        best[wins] = i
    return best.reshape(lead)


def compare_to_reference(
    records: dict[str, Records],
    val_labels: np.ndarray,
    test_labels: np.ndarray,
    better: Callable,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    chunk: int = 50,
    reference: str | None = None,
) -> Verdicts:
    """The reference (the method validation picks), every method's difference to it and
    its tier, from each method's :class:`Records`. ``better(a, b)``: the selection rule on
    ``(N, 2)`` score rows (balanced accuracy, minus the log-loss). See the module
    docstring for the procedure. ``reference``: a reference chosen elsewhere (by
    cross-validation on the training split); the choices are then held fixed and only the
    seeds and the test images are resampled (the records' validation arrays may be empty)."""
    names = list(records)
    if reference is not None and reference not in records:
        raise ValueError(f"reference {reference!r} is not among the methods compared")
    if not names:
        raise ValueError("no methods to compare")
    val_labels, test_labels = np.asarray(val_labels), np.asarray(test_labels)
    seeds = {r.test_correct.shape[0] for r in records.values()}
    if len(seeds) != 1:
        raise ValueError(f"every method needs the same number of seeds, got {sorted(seeds)}")
    n_seeds = seeds.pop()
    val_cw, n_val, n_test = _class_weights(val_labels), len(val_labels), len(test_labels)

    def method_rows(val_w: np.ndarray, seed_draw: np.ndarray, rechoose: bool):
        """Per method: each resample's chosen setting per drawn seed, and the method's
        validation row (mean over the drawn seeds)."""
        chosen, rows = {}, []
        b = len(val_w)
        for name in names:
            rec = records[name]
            scores = _seed_scores(rec, val_w)  # (b, S, G, 2)
            if rechoose:
                pick = _choose_rows(scores, better)  # (b, S)
            else:
                pick = np.broadcast_to(rec.chosen, (b, n_seeds))
            pick = np.take_along_axis(pick, seed_draw, axis=1)  # (b, S): the drawn seeds' choices
            seat = np.take_along_axis(scores, seed_draw[:, :, None, None], axis=1)  # the drawn seeds' scores
            picked = np.take_along_axis(seat, pick[:, :, None, None], axis=2)[:, :, 0]  # (b, S, 2)
            chosen[name] = pick
            rows.append(picked.mean(1))
        return chosen, np.stack(rows, axis=1)  # (b, M, 2)

    def accuracies(test_w: np.ndarray, seed_draw: np.ndarray, chosen: dict) -> np.ndarray:
        out = []
        for name in names:
            rec = records[name]
            s, g, n = rec.test_correct.shape
            acc = (test_w @ rec.test_correct.reshape(s * g, n).T.astype(np.float64)).reshape(len(test_w), s, g)
            acc = np.take_along_axis(acc, seed_draw[:, :, None], axis=1)
            out.append(np.take_along_axis(acc, chosen[name][:, :, None], axis=2)[:, :, 0].mean(1))
        return np.stack(out, axis=1)  # (b, M)

    # the point estimates: every seed once, the whole validation and test splits
    identity = np.arange(n_seeds)[None]
    chosen0, rows0 = method_rows(val_cw[None], identity, rechoose=False)
    ref = int(_choose_rows(rows0, better)[0]) if reference is None else names.index(reference)
    acc0 = accuracies(np.full((1, n_test), 1.0 / n_test), identity, chosen0)[0]
    point = acc0 - acc0[ref]

    rng = np.random.default_rng(seed)
    val_strata, test_strata = _strata(val_labels), _strata(test_labels)
    boots, same_ref = np.zeros((resamples, len(names))), 0
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        draw = rng.integers(0, n_seeds, size=(b, n_seeds)) if n_seeds > 1 else np.zeros((b, 1), dtype=np.int64)
        val_w = _resampled_weights(rng, val_strata, n_val, b) * val_cw
        test_w = _resampled_weights(rng, test_strata, n_test, b) / n_test
        chosen, rows = method_rows(val_w, draw, rechoose=reference is None)
        refs = _choose_rows(rows, better) if reference is None else np.full(b, ref)  # (b,)
        acc = accuracies(test_w, draw, chosen)
        boots[start : start + b] = acc - acc[np.arange(b), refs][:, None]
        same_ref += int((refs == ref).sum())

    se = boots.std(axis=0, ddof=1)
    live = [i for i in range(len(names)) if i != ref and se[i] > 0]
    if live:
        stat = np.max(np.abs(boots[:, live] - point[live]) / se[live], axis=1)
        crit = float(np.quantile(stat, level))
    else:
        crit = 0.0
    differences = {}
    for i, name in enumerate(names):
        lo, hi = point[i] - crit * se[i], point[i] + crit * se[i]
        if i == ref:
            tier = "reference"
        elif hi < 0:
            tier = "below the reference"
        elif lo > 0:
            tier = "above the reference"
        else:
            tier = "indistinguishable"
        differences[name] = Difference(names[ref], float(point[i]), float(lo), float(hi), tier)
    seeds_varied = ["stage-2 seeds"] if n_seeds > 1 else []
    if reference is None:
        varied = seeds_varied + ["validation images (each choice re-made)", "test images"]
        left_out = ["the epoch of each setting (kept as chosen on the whole validation split)", "stage-1 training"]
    else:
        varied = seeds_varied + ["test images"]
        left_out = ["the choices (made by cross-validation on the training split, not re-made per resample)",
                    "stage-1 training"]  # fmt: skip
    if n_seeds == 1:
        left_out.insert(0, "stage-2 seeds (one seed: the interval covers the validation and test samples only)")
    return Verdicts(
        reference=names[ref],
        test_best=names[int(np.argmax(acc0))],
        differences=differences,
        procedure=(PROCEDURE if reference is None else PROCEDURE_FIXED).format(level=level),
        resamples=resamples,
        seeds=n_seeds,
        varied=varied,
        left_out=left_out,
        reference_share=same_ref / resamples,
        selection="validation" if reference is None else "cross-validation",
    )
