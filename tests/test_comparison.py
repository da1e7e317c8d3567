"""Fair comparison: equal search budgets, seeds, paired bootstrap tiers."""

from __future__ import annotations

import numpy as np
import pytest

from lort.analysis.uncertainty import Records, compare_to_reference
from lort.cli import main
from lort.data.features import FeatureSet
from lort.stage2.compare import compare
from lort.stage2.methods import METHODS
from lort.stage2.plan import plan_job, spread
from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule
from lort.stage2.selection import better

from .test_stage2 import _toy


@pytest.fixture(scope="module")
def toy():
    return _toy()


def test_every_trained_method_gets_the_same_number_of_fits_with_its_default_among_them():
    for m in METHODS.values():
        job = plan_job(m, Schedule(), DEFAULT_LRS, None, True, DEFAULT_FITS_PER_METHOD)
        assert (
            len(job.settings) == DEFAULT_FITS_PER_METHOD if m.trains else len(job.settings) <= DEFAULT_FITS_PER_METHOD
        ), m.name
        default = m.settings(None, search=False)[0]
        assert any({k: v for k, v in s.items() if k != "lr"} == default for s in job.settings), m.name
    ce = plan_job(METHODS["ce"], Schedule(), DEFAULT_LRS, None, True, DEFAULT_FITS_PER_METHOD)
    lrs = sorted(s["lr"] for s in ce.settings)
    assert len(set(lrs)) == 6 and lrs[0] == min(DEFAULT_LRS) and lrs[-1] == max(DEFAULT_LRS)
    lort = plan_job(METHODS["lort"], Schedule(), DEFAULT_LRS, None, True, DEFAULT_FITS_PER_METHOD)
    assert sorted({s["lr"] for s in lort.settings}) == sorted(DEFAULT_LRS)
    # the whole grid when asked, user-fixed lists kept whole, one fit each with a single learning rate
    assert len(plan_job(METHODS["lort"], Schedule(), DEFAULT_LRS, None, True, None).settings) == 21
    fixed = plan_job(METHODS["lort"], Schedule(), DEFAULT_LRS, {"smooth": [0.9, 0.95, 0.98]}, True, 6)
    assert len(fixed.settings) == 9
    for m in METHODS.values():
        assert len(plan_job(m, Schedule(), (0.01,), None, True, DEFAULT_FITS_PER_METHOD).settings) == 1, m.name


def test_spread_keeps_the_ends_and_the_default():
    assert spread(list(range(8)), 6, keep=4) == [0, 1, 3, 4, 6, 7]
    assert spread(list(range(7)), 2, keep=5) == [0, 5]
    assert spread([1, 2], 5) == [1, 2]


def _records(val_right, test_right, chosen=None, val_nll=None):
    """Records from ``(S, G, n)`` arrays (validation log-likelihoods from the rights)."""
    val_right, test_right = np.asarray(val_right, bool), np.asarray(test_right, bool)
    nll = np.where(val_right, 0.1, 2.0) if val_nll is None else val_nll
    chosen = np.zeros(len(val_right), dtype=int) if chosen is None else chosen
    return Records(val_right, nll, test_right, chosen)


def _compare(records, val_labels, test_labels, resamples=400):
    from lort.testing.simulation import choose_on_validation

    choose_on_validation(records, val_labels, better)
    return compare_to_reference(records, val_labels, test_labels, better, resamples=resamples)


def test_the_reference_is_the_validation_pick_not_the_test_best():
    rng = np.random.default_rng(0)
    vl, tl = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 250)
    good_val = rng.random((1, 1, 200)) < 0.9
    weak_val = rng.random((1, 1, 200)) < 0.6
    test = rng.random((1, 1, 1000)) < 0.7
    records = {"a": _records(good_val, test), "b": _records(weak_val, test | (rng.random((1, 1, 1000)) < 0.2))}
    v = _compare(records, vl, tl)
    assert v.reference == "a" and v.test_best == "b"
    assert v.differences["a"].tier == "reference" and v.differences["a"].diff == 0.0
    assert v.differences["b"].diff == pytest.approx(records["b"].test_correct.mean() - test.mean())
    assert v.differences["b"].tier == "above the reference"  # b is better on test, and the table says so


def test_a_real_gap_is_below_and_noise_is_indistinguishable():
    rng = np.random.default_rng(1)
    vl, tl = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 250)
    val = rng.random((1, 1, 200)) < 0.8
    base = rng.random((1, 1, 1000)) < 0.7
    noisy = base.copy()
    noisy[0, 0, rng.choice(1000, 10, replace=False)] ^= True  # a handful of images differ
    worse = base & (rng.random((1, 1, 1000)) < 0.85)  # about 10 points worse
    v = _compare({"a": _records(val, base), "b": _records(val & (rng.random(val.shape) < 0.9), noisy),
                  "c": _records(val & (rng.random(val.shape) < 0.9), worse)}, vl, tl)  # fmt: skip
    assert v.reference == "a"
    assert v.differences["b"].tier == "indistinguishable" and v.differences["b"].low < 0 < v.differences["b"].high
    assert v.differences["c"].tier == "below the reference" and v.differences["c"].high < 0


def test_a_methods_seed_spread_widens_its_interval():
    rng = np.random.default_rng(2)
    vl, tl = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 250)
    val = np.broadcast_to(rng.random((1, 1, 200)) < 0.8, (3, 1, 200))
    base = rng.random(1000) < 0.7
    steady = np.stack([base & (rng.random(1000) < 0.97) for _ in range(3)])[:, None]
    shaky = np.stack([base & (rng.random(1000) < q) for q in (0.8, 0.97, 1.0)])[:, None]
    ref = np.stack([base] * 3)[:, None]
    v = _compare({"ref": _records(val, ref), "steady": _records(val & False, steady),
                  "shaky": _records(val & False, shaky)}, vl, tl)  # fmt: skip
    width = {n: v.differences[n].high - v.differences[n].low for n in ("steady", "shaky")}
    assert width["shaky"] > 1.5 * width["steady"]
    assert "stage-2 seeds" in v.varied


def test_a_lucky_pick_on_a_small_validation_split_is_not_a_real_difference():
    """Two settings that validation cannot tell apart but that differ on test: the method's
    choice is re-made in each resample, which widens its interval; with the choice held
    fixed the same gap would look certain."""
    rng = np.random.default_rng(3)
    vl, tl = np.repeat(np.arange(2), 10), np.repeat(np.arange(2), 2000)
    base = rng.random(4000) < 0.7
    val_a = rng.random((1, 1, 20)) < 0.8
    ref = _records(np.ones_like(val_a), base[None, None])  # validation's clear pick: the reference throughout
    val_b = np.concatenate([val_a, val_a], axis=1)  # two settings, equal on validation
    right, wrong = np.flatnonzero(val_a[0, 0])[0], np.flatnonzero(~val_a[0, 0])[0]
    val_b[0, 1, right], val_b[0, 1, wrong] = False, True  # as good, on other images
    test_b = np.stack([base, base & (rng.random(4000) < 0.9)])[None]  # the second is 7 points worse
    records = {"ref": ref, "b": _records(val_b, test_b)}
    v = _compare(records, vl, tl)
    d = v.differences["b"]
    assert d.diff == pytest.approx(test_b[0, records["b"].chosen[0]].mean() - base.mean())
    assert d.tier == "indistinguishable"  # the pick is a coin toss on 20 images
    assert d.low < -0.05  # the worse setting, picked in some resamples, is inside the interval
    assert "validation images (each choice re-made)" in v.varied


def test_one_seed_says_the_interval_covers_the_samples_only():
    rng = np.random.default_rng(4)
    vl, tl = np.repeat(np.arange(2), 20), np.repeat(np.arange(2), 100)
    v = _compare({"a": _records(rng.random((1, 2, 40)) < 0.8, rng.random((1, 2, 200)) < 0.7),
                  "b": _records(rng.random((1, 2, 40)) < 0.7, rng.random((1, 2, 200)) < 0.7)}, vl, tl)  # fmt: skip
    assert "stage-2 seeds" not in v.varied and any("one seed" in x for x in v.left_out)
    assert "one seed" in v.describe()


def test_simulated_nulls_give_few_false_below_verdicts_and_a_planted_gap_is_found():
    """The statistics tested by simulation (benchmarks/verdict_calibration.py runs more):
    under the null (the same method six times, different seeds) the family-wise rate of a
    false "below the reference" stays small; a planted gap of ~6 points is found."""
    from lort.testing.simulation import simulated_comparison

    false, found, n = 0, 0, 24
    for i in range(n):
        rec, vl, tl = simulated_comparison(np.random.default_rng(i), methods=4, test_per_class=100)
        v = _compare(rec, vl, tl, resamples=200)
        false += any(d.tier == "below the reference" for d in v.differences.values())
        rec, vl, tl = simulated_comparison(np.random.default_rng(100 + i), methods=4, effects={3: -0.2})
        v = _compare(rec, vl, tl, resamples=200)
        found += v.differences["m3"].tier == "below the reference"
    assert false <= 4  # 5% of 24 is 1.2; 4 or more would happen by chance with p < 0.03
    assert found >= n // 2


def test_seeds_give_mean_sd_and_intervals_and_the_first_seed_is_the_single_seed_run(toy):
    methods = [METHODS["ce"], METHODS["lort"], METHODS["crt"]]
    sched = Schedule(epochs=3, seed=4)
    one = compare(toy, methods, sched, lrs=(5e-3, 5e-2))
    three = compare(toy, methods, sched, lrs=(5e-3, 5e-2), seeds=3)
    for a, b in zip(one, three, strict=True):
        assert a.test["acc"] == b.test["acc"] and a.hyperparameters == b.hyperparameters
        assert [s["seed"] for s in b.seeds] == [4, 5, 6] and b.correct.shape == (3, 200)
        row = b.row()
        accs = [s["test"]["acc"] for s in b.seeds]
        assert row["test_acc"] == pytest.approx(100 * np.mean(accs), abs=0.01)
        assert row["test_acc_sd"] == pytest.approx(100 * np.std(accs, ddof=1), abs=0.01)
        assert row["tier"] in ("reference", "indistinguishable", "below the reference", "above the reference")
        assert row["fits"] == 6
    crt = next(r for r in three if r.method == "crt")
    assert len({s["test"]["acc"] for s in crt.seeds}) > 1


@pytest.mark.parametrize(("flag", "value"), [("--budget", "0"), ("--budget", "many"), ("--seeds", "0")])
def test_bad_budget_or_seeds_is_one_line_and_exit_2(tmp_path, toy, capsys, flag, value):
    path = tmp_path / "f.npz"
    toy.save(path)
    code = main(["compare", "--features", str(path), "--out", str(tmp_path / "o"), flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and value in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_the_verdict_names_the_validation_pick_and_each_tier_and_says_what_varied(toy):
    from lort.stage2.leaderboard import markdown, verdict

    results = compare(toy, [METHODS["ce"], METHODS["lort"], METHODS["crt"], METHODS["la_loss"]], Schedule(epochs=3),
                      lrs=(5e-3, 5e-2), seeds=2, resamples=300)  # fmt: skip
    v = results[0].verdicts
    assert all(r.verdicts is v for r in results)
    text = verdict(results)
    assert text.startswith(f"The method you would pick on validation is {v.reference} ")
    assert "Indistinguishable from it on test:" in text and "Below it:" in text and v.procedure in text
    ref = next(r for r in results if r.method == v.reference)
    means = {r.method: np.mean([s["val_balanced_acc"] for s in r.seeds]) for r in results}
    assert means[v.reference] >= max(means.values()) - 1e-9  # the validation pick, by its mean over seeds
    assert ref.difference.tier == "reference"
    board = markdown(results)
    assert "diff to reference [simultaneous 95% CI]" in board and "| reference |" in board


def test_without_validation_there_is_no_reference_and_the_verdict_says_so(toy):
    from lort.stage2.leaderboard import verdict

    fs = FeatureSet(splits={k: v for k, v in toy.splits.items() if k != "val"}, classes=toy.classes,
                    init_weight=toy.init_weight, init_bias=toy.init_bias)  # fmt: skip
    results = compare(fs, [METHODS["ce"], METHODS["lort"]], Schedule(epochs=2), seeds=2)
    assert all(r.difference is None for r in results)
    assert verdict(results).startswith("No validation split")
