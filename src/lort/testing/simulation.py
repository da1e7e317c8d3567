"""Simulated comparisons with a known truth, to test the statistics of a leaderboard.

Each simulated comparison draws the records a real one keeps (:class:`Records`: which
validation and test images each setting of each method got right, seed by seed, and its
validation log-likelihoods) from a model whose truth is known:

- every image has a difficulty (standard normal) and every class an offset: methods are
  scored on the same images, so their results are paired as in a real comparison;
- a method's setting ``g`` (its learning rates and hyperparameters) has a quality
  ``q = quality(base) + effect[m] + setting_effect[g]``, and each stage-2 seed adds noise;
- a classifier's margin on an image is ``q - difficulty - class offset + e``, with its
  own small noise ``e`` per image: the image is right where the margin is positive and
  its negative log-likelihood is ``softplus(-margin)``. Classifiers of similar quality
  therefore agree on most images, as re-trained heads on one representation do.

Under the **null** every method has the same setting effects and no effect of its own:
the same method run with different seeds, or heads that differ only by noise. A verdict
"below the reference" is then false. A **planted** effect lowers one method's quality.
"""

from __future__ import annotations

import numpy as np

from ..analysis.uncertainty import Records
from ..data.longtail import VAL_PER_CLASS


def _quality(p: float, spread: float) -> float:
    """The quality whose expected accuracy is ``p`` when margins spread with sd ``spread``."""
    from statistics import NormalDist

    return spread * NormalDist().inv_cdf(p)


def simulated_comparison(
    rng: np.random.Generator,
    methods: int = 6,
    seeds: int = 3,
    settings: int = 6,
    classes: int = 10,
    val_per_class: int = VAL_PER_CLASS,
    test_per_class: int = 100,
    base: float = 0.7,
    effects: dict[int, float] | None = None,
    setting_sd: float = 0.05,
    seed_sd: float = 0.02,
    class_sd: float = 0.5,
    own_sd: float = 0.5,
) -> tuple[dict[str, Records], np.ndarray, np.ndarray]:
    """``(records, val_labels, test_labels)`` of one simulated comparison; ``effects`` maps
    a method's index to its quality offset (-0.1 is about 3 points of accuracy at 70%).
    ``own_sd``: the noise of each classifier's margins (how often two classifiers of equal
    quality disagree). Each seed's choice on the whole validation split is left for the
    caller to make (:func:`choose_on_validation`)."""
    effects = effects or {}
    val_labels = np.repeat(np.arange(classes), val_per_class)
    test_labels = np.repeat(np.arange(classes), test_per_class)
    offset = rng.normal(0, class_sd, classes)
    d_val = rng.normal(0, 1, len(val_labels)) + offset[val_labels]
    d_test = rng.normal(0, 1, len(test_labels)) + offset[test_labels]
    setting_effect = rng.normal(0, setting_sd, settings)  # shared: the methods are the same under the null
    q0 = _quality(base, float(np.sqrt(1 + class_sd**2 + own_sd**2)))
    records = {}
    for m in range(methods):
        q = q0 + effects.get(m, 0.0) + setting_effect[None, :] + rng.normal(0, seed_sd, (seeds, settings))
        z_val = q[:, :, None] - d_val[None, None] + rng.normal(0, own_sd, (seeds, settings, len(d_val)))
        z_test = q[:, :, None] - d_test[None, None] + rng.normal(0, own_sd, (seeds, settings, len(d_test)))
        records[f"m{m}"] = Records(z_val > 0, np.logaddexp(0.0, -z_val), z_test > 0, np.zeros(seeds, dtype=np.int64))
    return records, val_labels, test_labels


def choose_on_validation(records: dict[str, Records], val_labels: np.ndarray, better) -> None:
    """Set each record's ``chosen`` as the comparison does: every seed's setting by the
    selection rule on the whole validation split."""
    from ..analysis.uncertainty import _choose_rows, _class_weights, _seed_scores

    w = _class_weights(np.asarray(val_labels))[None]
    for rec in records.values():
        rec.chosen = _choose_rows(_seed_scores(rec, w), better)[0]
