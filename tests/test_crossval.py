"""Selection without a validation split: stratified folds, the CV estimators, method="auto",
and the estimators inside scikit-learn's own search and pipeline tools."""

from __future__ import annotations

import numpy as np
import pytest

from lort import LogitsRetargetingClassifier, LogitsRetargetingClassifierCV, RetrainingClassifierCV
from lort.errors import LortError
from lort.stage2.crossval import CVResult, cross_validate, stratified_folds
from lort.stage2.methods import METHODS
from lort.stage2.schedule import DEFAULT_LRS, Schedule
from lort.testing import synthetic_features


@pytest.fixture(scope="module")
def toy():
    return synthetic_features(seed=1)


def _without_validation(tmp_path, toy, **meta):
    """``toy`` saved without its validation split (and with ``meta``)."""
    from lort.data.features import FeatureSet

    fs = FeatureSet({k: v for k, v in toy.splits.items() if k != "val"}, toy.classes, toy.init_weight, toy.init_bias)
    fs.meta.update(meta)
    path = tmp_path / "f.npz"
    fs.save(path)
    return path


def test_folds_are_stratified_and_rare_classes_are_handled_explicitly():
    y = np.repeat(np.arange(4), [20, 7, 2, 1])
    folds = stratified_folds(y, 5, seed=0)
    for c, n in enumerate([20, 7, 2, 1]):
        held = folds.fold[y == c]
        if n >= 5:
            assert sorted(np.bincount(held, minlength=5)) == sorted([n // 5 + (i < n % 5) for i in range(5)])
        elif n >= 2:
            assert (held >= 0).all() and len(set(held)) == n  # each sample held out once, in its own fold
        else:
            assert (held == -1).all()  # the only sample of its class always stays in training
    assert folds.partial == [2] and folds.unscored == [3]
    assert "scored in some folds only: [2]" in folds.describe() and "never scored: [3]" in folds.describe()
    assert np.array_equal(stratified_folds(y, 5, seed=0).fold, folds.fold)
    assert not np.array_equal(stratified_folds(y, 5, seed=1).fold, folds.fold)
    with pytest.raises(LortError, match="folds >= 2"):
        stratified_folds(y, 1)


def test_cross_validation_scores_every_setting_in_every_fold_and_chooses_by_the_rule(toy):
    folds = stratified_folds(toy.splits["train"][1], 3)
    sched = Schedule(epochs=3)
    r = cross_validate(METHODS["lort"], toy, sched, DEFAULT_LRS, None, folds, 6)
    assert r.fold_scores.shape == (6, 3, 3, 2) and np.isfinite(r.fold_scores).all()
    mean = r.fold_scores.mean(axis=2)
    assert r.best_row[0] == pytest.approx(mean[:, :, 0].max())  # the best fold-mean balanced accuracy
    assert 1 <= r.epoch <= 3
    post = cross_validate(METHODS["tau_norm"], toy, sched, None, None, folds, 6)
    assert post.fold_scores.shape[1] == 1 and post.epoch is None


def test_the_cv_estimator_needs_no_validation_split_and_reports_like_scikit_learn(toy):
    x, y = toy.splits["train"]
    xt, yt = toy.splits["test"]
    # prefer=None: the plain arg-max of the folds' mean, as GridSearchCV chooses
    clf = RetrainingClassifierCV(method=["ce", "lort", "crt", "tau_norm"], cv=3, epochs=4, prefer=None).fit(x, y)
    res = clf.cv_results_
    assert res["method"] == ["ce", "lort", "crt", "tau_norm"]
    assert {"params", "mean_test_score", "std_test_score", "split0_test_score", "split2_test_score",
            "rank_test_score"} <= set(res)  # fmt: skip
    best = int(np.argmin(res["rank_test_score"]))
    assert clf.best_method_ == res["method"][best] and clf.best_score_ == pytest.approx(res["mean_test_score"].max())
    assert clf.best_params_ == res["params"][best]
    assert clf.score(xt, yt) > 0.6 and clf.selection_.startswith("3-fold stratified cross-validation")
    # the refit is the chosen setting trained on all the data, kept at the chosen epoch
    m = METHODS[clf.best_method_]
    from lort.stage2.crossval import refit

    setting = {k: v for k, v in clf.best_params_.items() if k != "epoch"}
    from lort.data.features import FeatureSet

    bare = FeatureSet({"train": (x, y)}, toy.classes)  # as the estimator sees it: no classifier given
    head, _ = refit(m, bare, Schedule(epochs=4), setting, clf.best_params_["epoch"])
    w, b = head.linear_params()
    np.testing.assert_allclose(clf.coef_, w[0].numpy(), rtol=1e-6, atol=1e-6)


def test_auto_ranks_every_method_and_validation_data_takes_over_when_given(toy):
    x, y = toy.splits["train"]
    xv, yv = toy.splits["val"]
    auto = RetrainingClassifierCV(cv=2, epochs=2, fits_per_method=2).fit(x, y)
    assert auto.cv_results_["method"] == list(METHODS) and auto.best_method_ in METHODS
    on_val = RetrainingClassifierCV(method=["ce", "lort"], epochs=2).fit(x, y, X_val=xv, y_val=yv)
    assert on_val.selection_ == "the given validation split (X_val, y_val)" and not hasattr(on_val, "cv_folds_")


def test_lort_cv_searches_its_smoothing_and_nested_scores_the_whole_selection(toy):
    x, y = toy.splits["train"]
    clf = LogitsRetargetingClassifierCV(smooth=[0.5, 0.98], cv=3, epochs=3, nested=True).fit(x, y)
    assert clf.best_method_ == "lort" and clf.best_params_["smooth"] in (0.5, 0.98)
    assert len(clf.nested_scores_) == 3 and 0.0 < clf.nested_score_ <= 1.0
    assert clf.nested_score_ == pytest.approx(np.mean(clf.nested_scores_))


def test_bad_cv_input_is_a_clear_value_error(toy):
    x, y = toy.splits["train"]
    with pytest.raises(ValueError, match="folds >= 2"):
        RetrainingClassifierCV(method="ce", cv=1).fit(x, y)
    with pytest.raises(ValueError, match="unknown stage-2 method 'magic'"):
        RetrainingClassifierCV(method="magic").fit(x, y)
    with pytest.raises(ValueError, match="has no hyperparameter 'beta'"):
        RetrainingClassifierCV(method="lort", params={"beta": 0.9}).fit(x, y)
    with pytest.raises(ValueError, match="sample_weight is not supported"):
        RetrainingClassifierCV(method="ce").fit(x, y, sample_weight=np.ones(len(y)))
    with pytest.raises(ValueError, match="sample_weight is not supported"):
        LogitsRetargetingClassifier().fit(x, y, sample_weight=np.ones(len(y)))
    with pytest.raises(ValueError, match="cross-validating estimator"):
        LogitsRetargetingClassifier(smooth=[0.9, 0.98]).fit(x, y)  # a list without X_val says where to go


def test_inside_scikit_learns_search_cross_validation_and_pipelines(toy):
    sk = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert sk.__version__
    x, y = toy.splits["train"]
    xt, yt = toy.splits["test"]
    grid = GridSearchCV(
        LogitsRetargetingClassifier(epochs=3), {"smooth": [0.5, 0.98]}, cv=3, scoring="balanced_accuracy"
    )
    grid.fit(x, y)
    assert grid.best_params_["smooth"] in (0.5, 0.98) and len(grid.cv_results_["mean_test_score"]) == 2
    scores = cross_val_score(LogitsRetargetingClassifier(epochs=3), x, y, cv=3, scoring="balanced_accuracy")
    assert scores.shape == (3,) and (scores > 0.5).all()
    pipe = make_pipeline(StandardScaler(), PCA(n_components=6), LogitsRetargetingClassifier(epochs=3)).fit(x, y)
    assert pipe.score(xt, yt) > 0.6
    with pytest.raises(ValueError, match="sample_weight is not supported"):
        GridSearchCV(LogitsRetargetingClassifier(epochs=2), {"smooth": [0.9]}, cv=2).fit(
            x, y, sample_weight=np.ones(len(y))
        )


def test_the_cv_estimator_passes_check_estimator():
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    est = RetrainingClassifierCV(method=["ce", "tau_norm"], cv=2, epochs=2, fits_per_method=2)
    results = estimator_checks.check_estimator(est, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) > 40


def test_lort_retrain_ranks_methods_by_cross_validation_from_the_command_line(tmp_path, toy, capsys):
    import json

    from lort.cli import main

    path = _without_validation(tmp_path, toy)
    out = tmp_path / "sel"
    assert main(["retrain", "--features", str(path), "--method", "ce,lort,crt", "--cv", "2", "--epochs", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "selection.json").read_text())
    assert record["chosen_method"] in ("ce", "lort", "crt") and [r["rank"] for r in record["ranking"]] == [1, 2, 3]
    assert record["selection"].startswith("2-fold") and "biased upwards" in record["note"]
    assert (out / "classifier.npz").is_file() and "Chosen:" in capsys.readouterr().out
    assert main(["retrain", "--features", str(path), "--method", "auto", "--out", str(tmp_path / "x")]) == 2
    assert "no validation split to choose on; pass --cv K" in capsys.readouterr().err


def test_lort_compare_cv_chooses_on_folds_and_states_it(tmp_path, toy, capsys):
    import json

    from lort.cli import main

    path = _without_validation(tmp_path, toy)
    out = tmp_path / "cmp"
    assert main(["compare", "--features", str(path), "--methods", "ce,lort,tau_norm", "--cv", "2", "--epochs", "2",
                 "--seeds", "2", "--out", str(out)]) == 0  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    stats = board["statistics"]
    assert (
        stats["selection"].startswith("2-fold stratified cross-validation") and "cross-validation" in board["selection"]
    )
    cv_scores = {r["method"]: np.mean([s["val_balanced_acc"] for s in r["per_seed"]]) for r in board["results"]}
    top = max(cv_scores, key=cv_scores.get)
    rule = stats["reference_rule"]
    if top == "lort":  # the reference: the best fold-mean score, or LORT within one standard error of it
        assert stats["reference"] == "lort" and rule == ""
    else:
        assert (
            rule.startswith(f"{top} leads lort by")
            and "prefer='lort'" in rule
            and rule[:1].upper() + rule[1:] in board["verdict"]
        )
        assert stats["reference"] == (top if "more than one standard error" in rule else "lort")
    assert any("not re-made per resample" in x for x in stats["not_varied"])
    assert "| cv acc |" in (out / "leaderboard.md").read_text()
    assert board["verdict"].startswith("The method 2-fold stratified cross-validation on the training split picks")


def test_cross_validation_on_a_lort_backbones_own_training_images_is_flagged(tmp_path, toy, capsys):
    import json

    from lort.cli import main

    path = _without_validation(tmp_path, toy, checkpoint="runs/s1/best.pt")  # as lort extract records it
    out = tmp_path / "sel"
    assert main(["retrain", "--features", str(path), "--method", "ce,lort", "--cv", "2", "--epochs", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: the features come from a lort stage-1 checkpoint (runs/s1/best.pt)" in err
    assert "LORT is kept at its defaults" in err
    sel = json.loads((out / "selection.json").read_text())
    assert "optimistic" in sel["caveat"] and sel["backbone_trained_on_train"] is True
    assert sel["chosen_method"] == "lort" and sel["selection_score"] is None
    assert {r["method"] for r in sel["ranking"]} == {"ce", "lort"}  # the folds' ranking is still reported
    # asked to, the folds choose on such features too (and the warning stays)
    out2 = tmp_path / "sel2"
    assert main(["retrain", "--features", str(path), "--method", "ce,lort", "--cv", "2", "--epochs", "2",
                 "--backbone-trained-on-train", "no", "--out", str(out2)]) == 0  # fmt: skip
    sel2 = json.loads((out2 / "selection.json").read_text())
    assert sel2["backbone_trained_on_train"] is False and sel2["selection_score"] is not None
    assert "optimistic" in capsys.readouterr().err


def test_on_a_backbones_own_training_images_the_cv_estimator_keeps_lorts_defaults(toy):
    """backbone_trained_on_X=True: the folds run and are reported, the classifier kept is the
    preferred method at its defaults, exactly the plain estimator's fit."""
    x, y = toy.splits["train"]
    est = RetrainingClassifierCV(method=["ce", "lort", "crt"], cv=2, epochs=3, fits_per_method=2,
                                 backbone_trained_on_X=True).fit(x, y)  # fmt: skip
    assert est.cv_results_["method"] == ["ce", "lort", "crt"] and np.isfinite(est.cv_results_["mean_test_score"]).all()
    assert est.best_method_ == "lort" and np.isnan(est.best_score_) and "kept at its defaults" in est.selection_
    plain = LogitsRetargetingClassifier(epochs=3).fit(x, y)
    np.testing.assert_allclose(est.coef_, plain.coef_, rtol=1e-6, atol=1e-6)
    assert est.best_params_ == plain.best_params_
    one = LogitsRetargetingClassifierCV(smooth=[0.5, 0.9], cv=2, epochs=3, backbone_trained_on_X=True).fit(x, y)
    np.testing.assert_allclose(one.coef_, plain.coef_, rtol=1e-6, atol=1e-6)  # LORT's default smoothing, not 0.5/0.9
    free = RetrainingClassifierCV(method=["ce", "crt"], cv=2, epochs=3, fits_per_method=2,
                                  backbone_trained_on_X=True).fit(x, y)  # fmt: skip
    assert "no preferred method among the candidates: the folds chose" in free.selection_
    assert free.best_score_ == pytest.approx(free.cv_results_["mean_test_score"].max())
    with pytest.raises(ValueError, match="backbone_trained_on_X must be True or False"):
        RetrainingClassifierCV(method=["ce", "lort"], cv=2, epochs=1, backbone_trained_on_X="yes").fit(x, y)


def _cv_result(name: str, fold_accs) -> CVResult:
    accs = np.asarray(fold_accs, dtype=float)
    scores = np.stack([accs, np.zeros_like(accs)], axis=-1)[None, None]  # (G=1, E=1, k, 2)
    return CVResult(name, [{}], scores, 0, None)


def test_the_one_standard_error_rule_keeps_the_preferred_method_within_the_fold_noise():
    from lort.stage2.crossval import choose_method, paired_gap

    lort = _cv_result("lort", [0.70, 0.72, 0.74, 0.76, 0.78])
    noisy = _cv_result("other", [0.74, 0.69, 0.77, 0.73, 0.81])  # leads by 0.008, fold spread larger
    clear = _cv_result("clear", [0.75, 0.77, 0.79, 0.81, 0.83])  # leads by 0.05 in every fold
    gap, se = paired_gap(noisy, lort)
    assert gap == pytest.approx(0.008) and 0 < se and gap < se
    assert choose_method([lort, noisy]) == 1  # the plain rule takes the best mean
    assert choose_method([lort, noisy], prefer="lort") == 0
    assert choose_method([lort, noisy, clear], prefer="lort") == 2
    assert choose_method([noisy, clear], prefer="lort") == 1  # the preferred method is not a candidate
    gap, se = paired_gap(clear, lort)
    assert gap == pytest.approx(0.05) and se == pytest.approx(0.0, abs=1e-12)


def test_the_estimator_applies_the_one_standard_error_rule_to_its_fold_table():
    X, y = synthetic_features(seed=0, k=4, d=16).splits["train"]
    for prefer in ("lort", "ce", None):
        est = RetrainingClassifierCV(method=["ce", "lort"], cv=3, epochs=3, fits_per_method=1, prefer=prefer)
        est.fit(X, y)
        res = est.cv_results_
        folds = np.stack([res[f"split{i}_test_score"] for i in range(3)], axis=1)  # (methods, folds)
        top = int(np.argmin(res["rank_test_score"]))
        expected = res["method"][top]
        if prefer is not None and expected != prefer:
            d = folds[top] - folds[res["method"].index(prefer)]
            expected = expected if d.mean() > d.std(ddof=1) / np.sqrt(3) else prefer
            assert f"prefer={prefer!r}" in est.selection_
        assert est.best_method_ == expected
    with pytest.raises(LortError, match="prefer"):
        RetrainingClassifierCV(method=["ce", "lort"], cv=3, epochs=1, fits_per_method=1, prefer=3).fit(X, y)


def test_the_unseen_images_suite_draws_its_sets_from_images_the_backbone_never_used():
    """benchmarks/unseen_images_suite.py: the new long-tailed sets hold only images outside the
    backbone's train and validation splits, follow the profile, and drop a class too scarce."""
    import importlib
    import sys
    from pathlib import Path

    from lort.data.profiles import class_counts

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        suite = importlib.import_module("unseen_images_suite")
    finally:
        sys.path.pop(0)
    labels = np.repeat(np.arange(4), 500)
    used = np.concatenate([np.flatnonzero(labels == 0)[:495], np.flatnonzero(labels == 1)[:300]])  # class 0: 5 left
    unseen = np.setdiff1d(np.arange(len(labels)), used)
    kept, tr, trl, va, val = suite.plan_set(labels, unseen, "unseen-first", 10.0, 10, 300, seed=0)
    assert 0 not in kept and kept[-1] == 1  # the scarce class is dropped, the most used one is the tail
    assert not set(tr) & set(used) and not set(va) & set(used) and not set(tr) & set(va)
    assert np.bincount(trl).tolist() == class_counts("exp", 300, 3, 10.0)
    assert np.bincount(val).tolist() == [10, 10, 10]
    assert [int(labels[i]) for i in tr[trl == 0][:1]] == [kept[0]]
    forward = suite.plan_set(labels, unseen, "backbone-first", 10.0, 10, 4000, seed=0)
    assert forward[0] == [1, 2, 3] and np.bincount(forward[2])[0] == 190  # class 1's 200 unseen, 10 for validation
