"""How sure a comparison is: means over seeds and paired bootstrap intervals on the test set.

Every method is scored on the same test images, so differences between methods are
measured *paired*: each bootstrap resample draws test images (within each class, so the
class make-up of the test split is kept) and recomputes every method's accuracy on the
same draw. A method is *tied with the best* when the 95% interval of its accuracy minus
the best method's holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass
class Difference:
    """A method's test accuracy minus the best method's (fractions), with its interval."""

    best: str
    diff: float
    low: float
    high: float

    @property
    def tied(self) -> bool:
        return self.low <= 0.0 <= self.high

    @property
    def tier(self) -> str:
        if self.diff == 0.0 and self.low == 0.0 and self.high == 0.0:
            return "best"
        return "tied with the best" if self.tied else "below the best"


def paired_bootstrap(
    correct: dict[str, np.ndarray],
    labels: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, Difference]:
    """``correct[name]``: ``(seeds, n)`` booleans, whether each seed's classifier of the
    method got each test image right. Accuracy is the mean over seeds and images; the best
    method has the highest. Returns, per method, its difference to the best with a
    stratified paired bootstrap ``level`` interval (``resamples`` draws of the test images,
    each class resampled within itself)."""
    names = list(correct)
    if not names:
        return {}
    labels = np.asarray(labels)
    per_image = np.stack([np.asarray(correct[n], dtype=np.float64).reshape(-1, len(labels)).mean(0) for n in names])
    acc = per_image.mean(1)
    best = int(np.argmax(acc))  # the first of equals
    diffs = per_image - per_image[best]  # (M, n): paired differences, image by image
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    totals = np.zeros((len(names), resamples))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        for members in classes:
            draw = members[rng.integers(0, len(members), size=(b, len(members)))]  # (b, n_c)
            totals[:, start : start + b] += diffs[:, draw].sum(2)
    boots = totals / len(labels)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail], axis=1)
    return {
        n: Difference(names[best], float(acc[i] - acc[best]), float(low[i]), float(high[i]))
        for i, n in enumerate(names)
    }
