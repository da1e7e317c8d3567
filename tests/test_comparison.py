"""Fair comparison: equal search budgets, seeds, paired bootstrap tiers."""

from __future__ import annotations

import numpy as np
import pytest

from lort.analysis.uncertainty import paired_bootstrap
from lort.cli import main
from lort.stage2.compare import compare
from lort.stage2.methods import METHODS
from lort.stage2.plan import plan_job, spread
from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule

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


def test_paired_bootstrap_separates_real_gaps_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 250)
    base = rng.random(1000) < 0.7
    noisy = base.copy()
    flip = rng.choice(1000, 10, replace=False)
    noisy[flip] = ~noisy[flip]  # a handful of images differ: no real gap
    worse = base & (rng.random(1000) < 0.85)  # ~10 points worse
    out = paired_bootstrap({"a": base[None], "b": noisy[None], "c": worse[None]}, labels, resamples=500)
    best = max(("a", "b"), key=lambda n: out[n].diff)
    assert out[best].tier == "best"
    assert out["a"].tied and out["b"].tied
    assert not out["c"].tied and out["c"].high < 0 and out["c"].tier == "below the best"
    assert out["c"].diff == pytest.approx(worse.mean() - base.mean() if best == "a" else worse.mean() - noisy.mean())
    # seeds average per image: two seeds, one right and one wrong, count half
    two = paired_bootstrap({"x": np.stack([base, ~base])}, labels, resamples=10)
    assert two["x"].diff == 0.0


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
        assert row["tier"] in ("best", "tied with the best", "below the best") and row["fits"] == 6
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


def test_the_verdict_lists_the_methods_tied_with_the_best_but_not_the_best_itself():
    from lort.analysis.uncertainty import Difference
    from lort.stage2.compare import MethodResult
    from lort.stage2.leaderboard import verdict

    def result(name, acc, diff, low, high):
        r = MethodResult(name, name, {}, 1, None, 0.0, head=None, test={"acc": acc})
        r.difference = Difference("mislas", diff, low, high)
        return r

    text = verdict(
        [
            result("mislas", 0.47, 0.0, 0.0, 0.0),
            result("crt", 0.465, -0.005, -0.01, 0.002),
            result("lort", 0.37, -0.10, -0.11, -0.09),
        ]
    )
    assert text.startswith("LORT is below the best method, mislas")
    assert text.endswith("Tied with the best: crt.")
