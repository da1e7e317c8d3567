from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lort.analysis.metrics import grouped_balanced_accuracy
from lort.cli import main
from lort.data.features import FeatureSet, load_features
from lort.errors import LortError
from lort.stage2 import (
    METHODS,
    LogitsRetargetingLoss,
    Schedule,
    fit_head,
    fit_method,
    lort_target,
    ratio_from_smooth,
    smooth_from_ratio,
)
from lort.stage2 import losses as L
from lort.stage2.compare import compare
from lort.stage2.heads import LinearHead, logits_of
from lort.stage2.methods import Method
from lort.stage2.trainer import epoch_order
from lort.testing import check_method, synthetic_features
from lort.testing import oracles as O

# ----------------------------------------------------------------------------- LORT target


def test_lort_target_numbers_for_100_classes():
    t = lort_target(torch.tensor([3]), 100, 0.98)[0]
    assert t[3].item() == pytest.approx(0.0298)
    assert t[0].item() == pytest.approx(0.0098)
    assert t.sum().item() == pytest.approx(1.0)


def test_target_ratio_and_smooth_are_inverse():
    assert ratio_from_smooth(0.98, 100) == pytest.approx(3.0408, abs=1e-4)
    assert ratio_from_smooth(0.98, 10) == pytest.approx(1.2041, abs=1e-4)
    assert smooth_from_ratio(3.04, 10) == pytest.approx(0.8306, abs=1e-4)
    for k in (10, 100, 1000):
        assert ratio_from_smooth(smooth_from_ratio(2.5, k), k) == pytest.approx(2.5)


@pytest.mark.parametrize("s", [1.0, -0.1, 1.5, float("nan")])
def test_smooth_outside_unit_interval_is_rejected(s):
    with pytest.raises(LortError, match="must lie in \\[0, 1\\)"):
        LogitsRetargetingLoss(smooth=s)


def test_lort_loss_is_cross_entropy_against_the_target():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    loss = LogitsRetargetingLoss(0.9)(logits, y)
    t = torch.full((8, 5), 0.9 / 5)
    t[torch.arange(8), y] = 0.1 + 0.9 / 5
    assert loss.item() == pytest.approx(-(t * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-6)
    assert LogitsRetargetingLoss(smooth=0.0)(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    by_ratio = LogitsRetargetingLoss(target_ratio=ratio_from_smooth(0.9, 5))(logits, y)
    assert by_ratio.item() == pytest.approx(loss.item(), rel=1e-6)


def test_grouped_losses_match_their_single_forms():
    torch.manual_seed(1)
    logits, y = torch.randn(3, 16, 4), torch.randint(0, 4, (16,))
    w = torch.rand(4) + 0.5
    got = O.grouped_cross_entropy(logits, y, w)
    for g in range(3):
        assert got[g].item() == pytest.approx(F.cross_entropy(logits[g], y, weight=w).item(), rel=1e-5)
    s = torch.tensor([0.0, 0.5, 0.98])
    got = O.grouped_soft_cross_entropy(logits, L.grouped_lort_target(y, 4, s))
    for g in range(3):
        assert got[g].item() == pytest.approx(LogitsRetargetingLoss(float(s[g]))(logits[g], y).item(), rel=1e-5)
    gamma = torch.tensor([0.0, 2.0, 2.0])
    got = O.grouped_focal(logits, y, gamma)
    assert got[0].item() == pytest.approx(F.cross_entropy(logits[0], y).item(), rel=1e-5)
    assert got[1].item() == pytest.approx(O.focal_loss(logits[1], y, 2.0).item(), rel=1e-5)


# ----------------------------------------------------------------------------- the loop


def test_class_balanced_sampler_draws_classes_uniformly():
    labels = np.repeat(np.arange(4), [1000, 100, 10, 2])
    order = epoch_order(labels, "balanced", torch.Generator().manual_seed(0), 4).numpy()
    frac = np.bincount(labels[order], minlength=4) / len(order)
    assert np.allclose(frac, 0.25, atol=0.02)
    nat = epoch_order(labels, "natural", torch.Generator().manual_seed(0), 4).numpy()
    assert sorted(nat.tolist()) == list(range(len(labels)))


_toy = synthetic_features  # the conformance checks' data, shared with the tests here


def test_grid_fitted_side_by_side_equals_separate_fits():
    fs = _toy()
    x, y = (torch.as_tensor(a) for a in fs.splits["train"])
    w, b = torch.as_tensor(fs.init_weight), torch.as_tensor(fs.init_bias)
    smooth = [0.5, 0.9]
    lrs = [0.01, 0.002]
    sched = Schedule(epochs=3, weight_decay=1e-3)

    def loss_for(s):
        st = torch.tensor(s)
        return lambda lg, yy, e: O.grouped_soft_cross_entropy(lg, L.grouped_lort_target(yy, 5, st))

    both, _ = fit_head(LinearHead(w, b, 2), x, y, loss_for(smooth), sched, lr=lrs)
    for g in range(2):
        single, _ = fit_head(LinearHead(w, b), x, y, loss_for([smooth[g]]), sched, lr=lrs[g])
        assert torch.allclose(both.weight[g], single.weight[0], atol=1e-5)
        assert torch.allclose(both.bias[g], single.bias[0], atol=1e-5)


def test_manual_sgd_matches_torch_optim_sgd():
    fs = _toy()
    x, y = (torch.as_tensor(a) for a in fs.splits["train"])
    w, b = torch.as_tensor(fs.init_weight), torch.as_tensor(fs.init_bias)
    sched = Schedule(epochs=1, lr=0.01, weight_decay=1e-3, batch_size=len(y))  # one full-batch step
    head, _ = fit_head(LinearHead(w, b), x, y, lambda lg, yy, e: O.grouped_cross_entropy(lg, yy), sched)
    ref = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    F.cross_entropy(ref(x), y).backward()
    opt.step()
    assert torch.allclose(head.weight[0], ref.weight, atol=1e-6)


def test_best_epoch_is_kept_per_classifier():
    fs = _toy()
    x, y = (torch.as_tensor(a) for a in fs.splits["train"])
    xv, yv = (torch.as_tensor(a) for a in fs.splits["val"])
    head, scores = fit_head(
        LinearHead(torch.as_tensor(fs.init_weight), torch.as_tensor(fs.init_bias), 2), x, y,
        lambda lg, yy, e: O.grouped_cross_entropy(lg, yy), Schedule(epochs=6), lr=[0.5, 1e-4],
        score_fn=lambda h: grouped_balanced_accuracy(h(xv).argmax(2), yv, 5),
    )  # fmt: skip
    assert scores.shape == (6, 2)
    final = grouped_balanced_accuracy(head(xv).argmax(2), yv, 5).numpy()
    assert np.allclose(final, scores.max(0))


# ----------------------------------------------------------------------------- conformance suite


@pytest.fixture(scope="module")
def toy():
    return _toy()


@pytest.mark.parametrize("name", list(METHODS))
def test_every_built_in_method_passes_the_public_conformance_checks(name, toy):
    check_method(METHODS[name], toy)


class _Unseeded(Method):
    """A broken method: its head starts from the global random state, not the seed."""

    name = "unseeded"
    title = "unseeded"
    source = "a test"
    deviations = ("none",)

    def build_head(self, ctx, hps):
        return LinearHead(ctx.init_weight + torch.randn(ctx.init_weight.shape), ctx.init_bias, len(hps))


class _Undocumented(Method):
    name = "undocumented"
    title = "undocumented"
    source = "a test"


class _PeeksAtTest(Method):
    """A broken method: its classifier depends on data beyond the training split (here a
    module-level reference to the test split, as a careless plug-in might hold)."""

    name = "peeks"
    title = "peeks"
    source = "a test"
    deviations = ("none",)
    seen: list = []

    def build_head(self, ctx, hps):
        x = torch.as_tensor(np.nan_to_num(self.seen[0].splits["test"][0], nan=50.0))
        return LinearHead(ctx.init_weight + 1e-3 * x.mean(), ctx.init_bias, len(hps))


def test_the_conformance_checks_fail_broken_methods(toy):
    import lort.testing as T

    with pytest.raises(AssertionError, match="unseeded: a second run"):
        check_method(_Unseeded(), toy)
    with pytest.raises(AssertionError, match="undocumented: state its deviations"):
        check_method(_Undocumented(), toy)
    peeks = _PeeksAtTest()
    peeks.seen = [toy]
    first = T.check_learns(peeks, toy)
    with pytest.raises(AssertionError):  # through compare, the NaN test split changes its logits
        orig = T._fit

        def fit_seeing(method, fs, others=()):
            peeks.seen = [fs]
            return orig(method, fs, others)

        T._fit = fit_seeing
        try:
            T.check_no_test_data_read(peeks, toy, first)
        finally:
            T._fit = orig


def test_compare_evaluates_test_after_selection(toy):
    results = compare(toy, [METHODS["ce"], METHODS["lort"]], Schedule(epochs=3), lrs=(5e-3,))
    assert [r.method for r in results] == ["ce", "lort"]
    x, y = toy.splits["test"]
    for r in results:  # the reported test accuracy is the chosen classifier's, computed once
        assert r.test["acc"] == pytest.approx(float((logits_of(r.head, x).argmax(1) == y).mean()))
        assert r.correct.shape == (1, len(y)) and r.correct.mean() == pytest.approx(r.test["acc"])


def test_without_validation_split_nothing_is_searched(toy):
    fs = FeatureSet(splits={k: v for k, v in toy.splits.items() if k != "val"}, classes=toy.classes,
                    init_weight=toy.init_weight, init_bias=toy.init_bias)  # fmt: skip
    r = fit_method(METHODS["lort"], fs, Schedule(epochs=2))
    assert r.hyperparameters["note"].startswith("no validation split") and r.epoch == 2


def test_without_validation_every_method_runs_at_its_declared_default(toy):
    fs = FeatureSet(splits={k: v for k, v in toy.splits.items() if k != "val"}, classes=toy.classes,
                    init_weight=toy.init_weight, init_bias=toy.init_bias)  # fmt: skip
    for name in ("lort", "tau_norm", "la_posthoc", "focal", "cb_reweight"):
        method = METHODS[name]
        r = fit_method(method, fs, Schedule(epochs=1))
        chosen = {k: v for k, v in r.hyperparameters.items() if k not in ("note", "lr")}
        assert chosen == {p.name: p.default for p in method.params if p.default is not None}, name
    assert METHODS["tau_norm"].param("tau").default == 1.0 and METHODS["lort"].param("smooth").default == 0.98


# ----------------------------------------------------------------------------- hyperparameters owned by methods


def test_every_method_declares_valid_parameters():
    for name, method in METHODS.items():
        for p in method.params:
            if p.default is not None:
                assert p.check(p.default, name) == p.default, (name, p.name)
            for v in p.grid:
                p.check(v, name)
            assert p.name in method.describe()


def test_settings_fix_values_search_grids_and_refuse_unknown_or_out_of_range():
    lort = METHODS["lort"]
    assert lort.settings() == [{"smooth": s} for s in lort.param("smooth").grid]
    assert lort.settings(search=False) == [{"smooth": 0.98}]
    assert lort.settings({"smooth": [0.9, 0.98]}) == [{"smooth": 0.9}, {"smooth": 0.98}]
    assert lort.settings({"target_ratio": 3}) == [{"target_ratio": 3.0}]
    assert METHODS["mislas"].settings({"smooth_head_tail": [0.2, 0.0]}) == [{"smooth_head_tail": (0.2, 0.0)}]
    with pytest.raises(LortError, match=r"method ce has no hyperparameter 'smooth' \(its hyperparameters: none\)"):
        METHODS["ce"].settings({"smooth": 0.9})
    with pytest.raises(LortError, match=r"method focal: gamma must lie in \[0, inf\), got -1.0"):
        METHODS["focal"].settings({"gamma": -1})
    with pytest.raises(LortError, match="give smooth or target_ratio, not both"):
        lort.settings({"smooth": 0.9, "target_ratio": 3})


def test_compare_fixes_a_methods_hyperparameter_from_the_cli_and_from_yaml(tmp_path, toy, capsys):
    path = tmp_path / "f.npz"
    toy.save(path)
    out = tmp_path / "cmp"
    args = ["compare", "--features", str(path), "--methods", "lort,tau_norm", "--epochs", "2", "--lrs", "0.01"]
    assert main([*args, "--set", "lort.smooth=0.9", "--set", "tau_norm.tau=[0.5,1.0]", "--out", str(out)]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {r["method"]: r for r in board["results"]}
    assert rows["lort"]["hyperparameters"]["smooth"] == 0.9
    assert rows["tau_norm"]["hyperparameters"]["tau"] in (0.5, 1.0)
    assert board["fixed_hyperparameters"] == {"lort": {"smooth": 0.9}, "tau_norm": {"tau": [0.5, 1.0]}}
    capsys.readouterr()
    assert main([*args, "--set", "lort.beta=0.9", "--out", str(tmp_path / "x")]) == 2
    assert (
        "method lort has no hyperparameter 'beta' (its hyperparameters: smooth, target_ratio)"
        in capsys.readouterr().err
    )
    assert main([*args, "--set", "ce.smooth=0.9", "--out", str(tmp_path / "x")]) == 2
    assert "not among the methods compared" in capsys.readouterr().err
    assert main([*args, "--set", "smooth=0.9", "--out", str(tmp_path / "x")]) == 2
    assert "name the method, e.g. --set lort.smooth=0.98" in capsys.readouterr().err
    # retrain: --set PARAM=VALUE for its one method, --smooth as a shortcut
    rt = ["retrain", "--features", str(path), "--epochs", "1", "--lr", "0.01"]
    assert main([*rt, "--method", "cb_reweight", "--set", "beta=0.999", "--out", str(tmp_path / "rt")]) == 0
    assert json.loads((tmp_path / "rt" / "summary.json").read_text())["hyperparameters"]["beta"] == 0.999
    assert main([*rt, "--method", "ce", "--smooth", "0.9", "--out", str(tmp_path / "rt2")]) == 2
    assert "method ce has no hyperparameter 'smooth'" in capsys.readouterr().err
    # YAML: the stage2 section's params are checked before any work
    from lort.config import load_config
    from lort.pipeline import run_pipeline

    cfg = load_config(None, {"stage2.params": {"lort": {"smooth": 1.5}}})
    with pytest.raises(LortError, match=r"method lort: smooth must lie in \[0, 1\), got 1.5"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_augmented_views_count_images_not_feature_rows(tmp_path):
    """With views > 1 the train split holds every image once per view; shot groups, effective
    numbers and the reported train counts must still be those of the images."""
    from lort.data import make_long_tailed, read_cifar
    from lort.models import create_model
    from lort.stage2.extract import extract_features

    from .conftest import make_cifar_archive

    make_cifar_archive(tmp_path, "cifar10", 40, 2)
    ds = make_long_tailed(read_cifar("cifar10", tmp_path), imbalance_ratio=10, max_per_class=30, val_per_class=5)
    torch.manual_seed(0)
    fs = extract_features(create_model("resnet32", 10).eval(), ds, views=3)
    assert len(fs.splits["train"][1]) == 3 * len(ds.train)
    assert fs.train_counts.tolist() == ds.train_counts.tolist()
    assert fs.groups.tolist() == ds.groups.tolist()
    fs.save(tmp_path / "f.npz")  # the views travel with the file
    assert load_features(tmp_path / "f.npz").train_counts.tolist() == ds.train_counts.tolist()
    fs.meta["views"] = 2  # 3 rows an image cannot be 2 views of each
    fs.save(tmp_path / "bad.npz")
    with pytest.raises(LortError, match=r"bad\.npz: meta_json views = 2, but the train rows are not"):
        load_features(tmp_path / "bad.npz")
    for views in ("3", 1.5, 0, True):  # not a whole number of views: refused, never read as 1
        fs.meta["views"] = views
        fs.save(tmp_path / "bad.npz")
        with pytest.raises(LortError, match=rf"bad\.npz: meta_json views = {views!r} is not a whole number"):
            load_features(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- CLI and bad input


def test_compare_cli_writes_the_leaderboard(tmp_path, toy, capsys):
    path = tmp_path / "f.npz"
    toy.save(path)
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--features",
                str(path),
                "--out",
                str(out),
                "--epochs",
                "3",
                "--lrs",
                "0.01",
            ]
        )
        == 0
    )
    md = (out / "leaderboard.md").read_text()
    assert md.count("\n| ") == len(METHODS) + 1 and "distinct methods" in md and "95% interval" in md
    assert (out / "leaderboard.csv").read_text().count("\n") == len(METHODS) + 1
    assert (out / "logits" / "lort.npz").is_file() and (out / "classifiers" / "lort.npz").is_file()


def test_retrain_cli_with_target_ratio(tmp_path, toy, capsys):
    path = tmp_path / "f.npz"
    toy.save(path)
    out = tmp_path / "rt"
    assert (
        main(
            [
                "retrain",
                "--features",
                str(path),
                "--target-ratio",
                "3",
                "--out",
                str(out),
                "--epochs",
                "2",
                "--lr",
                "0.01",
            ]
        )
        == 0
    )
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["hyperparameters"]["target_ratio"] == 3 and summary["hyperparameters"]["lr"] == 0.01


def _save(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("arrays", "extra", "message"),
    [
        ({"train_features": np.array([[np.nan, 1.0], [1.0, 1.0]])}, [], "NaN or Inf"),
        (
            {"test_features": np.ones((2, 3), np.float32)},
            [],
            "test features have 3 dims, train has 2",
        ),
        ({"test_labels": np.array([0, 5])}, [], "test label 5 outside"),
        (
            {"train_labels": np.array([0, 0]), "classes": np.array(["a", "b"])},
            [],
            "class 1 has no training samples",
        ),
        ({}, ["--smooth", "1.0"], "must lie in [0, 1)"),
        ({}, ["--method", "magic"], "unknown stage-2 method 'magic'"),
        ({"train_features": np.ones(2, np.float32)}, [], "must be 2-D"),
        ({"train_labels": np.array([0, 1, 1])}, [], "2 feature rows but 3 labels"),
    ],
)
def test_bad_stage2_input_is_one_line_and_exit_2(tmp_path, capsys, arrays, extra, message):
    base = {
        "train_features": np.ones((2, 2), np.float32),
        "train_labels": np.array([0, 1]),
        "test_features": np.ones((2, 2), np.float32),
        "test_labels": np.array([0, 1]),
    }
    path = _save(tmp_path, **(base | arrays))
    code = main(["retrain", "--features", path, "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_lort_improves_rare_class_accuracy_over_ce_on_real_features(short_cifar10_lt_run):
    from lort.stage2 import evaluate_test

    fs = short_cifar10_lt_run["features"]
    assert (fs.groups == 2).sum() >= 1  # the profile has Few classes
    sched = Schedule()  # the reference schedule: lr 5e-4, 20 epochs, batch 64
    ce = fit_method(METHODS["ce"], fs, sched, lrs=(5e-4,))
    paper = fit_method(METHODS["lort_reference"], fs, sched, lrs=(5e-4,), fixed={"smooth": 0.98})
    lort = fit_method(METHODS["lort"], fs, sched, lrs=(5e-4,), fixed={"smooth": 0.98})
    for r in (ce, paper, lort):
        evaluate_test(r, fs)
    assert paper.test["few"] > ce.test["few"] + 0.02, (ce.test, paper.test)
    rare = fs.groups > 0  # Medium and Few classes

    def rare_acc(r):
        return float(np.mean(np.asarray(r.test["per_class"])[rare]))

    assert lort.test["acc"] >= ce.test["acc"] and rare_acc(lort) > rare_acc(ce) + 0.02, (ce.test, lort.test)


def test_warm_start_methods_fit_a_ce_classifier_when_none_is_given(toy):
    fs = FeatureSet(splits=dict(toy.splits), classes=toy.classes)  # no init_weight
    r = fit_method(METHODS["lort"], fs, Schedule(epochs=3), lrs=(5e-3,))
    assert "cross-entropy fit from zero" in fs.meta["init_classifier"]
    acc = (logits_of(r.head, toy.splits["test"][0]).argmax(1) == toy.splits["test"][1]).mean()
    assert acc > 0.5


def test_discriminant_directions_solve_the_shrunk_within_class_covariance():
    from lort.stage2.heads import discriminant_directions

    rng = np.random.default_rng(0)
    k, d = 4, 6
    y = np.repeat(np.arange(k), [40, 12, 5, 3])
    x = (rng.normal(size=(k, d))[y] * 3 + rng.normal(size=(len(y), d)) @ rng.normal(size=(d, d))).astype(np.float32)
    means = np.stack([x[y == c].astype(np.float64).mean(0) for c in range(k)])
    resid = x - means[y]
    cov = resid.T @ resid / len(x)
    for shrink in (0.0, 1.0):
        ridged = cov + shrink * np.trace(cov) / d * np.eye(d)
        expected = np.linalg.solve(ridged, (means - x.astype(np.float64).mean(0)).T).T
        got = discriminant_directions(torch.as_tensor(x), torch.as_tensor(y), k, shrink, rows=7).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_lort_takes_its_directions_from_the_given_classifier_else_from_the_discriminant(toy):
    from lort.stage2.context import context
    from lort.stage2.heads import discriminant_directions

    for given in (True, False):
        fs = toy if given else FeatureSet(splits=dict(toy.splits), classes=toy.classes)
        ctx = context(fs, Schedule())
        expected = ctx.init_weight if given else discriminant_directions(ctx.x, ctx.y, fs.num_classes)
        head = METHODS["lort"].build_head(ctx, [{}])
        unit = expected / expected.norm(dim=1, keepdim=True)
        torch.testing.assert_close(head.weight[0] / head.weight[0].norm(dim=1, keepdim=True), unit)


# ----------------------------------------------------------------------------- the engine: fused passes, memory budget, plan


def _rows(results):
    return [r.row() | {"time_s": 0} for r in results], [r.search for r in results]


def _same_choices(a, b) -> None:
    """The guarantee that holds on every CPU: the same setting and epoch are chosen, the
    same validation balanced accuracy is recorded, and the recorded log-losses agree
    within the selection rule's tolerance (the BLAS may sum in another order when more
    settings share a matrix product)."""
    from lort.stage2.selection import LOG_LOSS_RTOL

    assert (a.method, a.hyperparameters, a.epoch) == (b.method, b.hyperparameters, b.epoch)
    assert len(a.search) == len(b.search), a.method
    for x, y in zip(a.search, b.search, strict=True):
        assert (x["hyperparameters"], x["epoch"], x["val_balanced_acc"]) == (
            y["hyperparameters"],
            y["epoch"],
            y["val_balanced_acc"],
        ), a.method
        if x["val_log_loss"] is not None:
            assert abs(x["val_log_loss"] - y["val_log_loss"]) <= LOG_LOSS_RTOL * abs(y["val_log_loss"]), a.method


def test_fused_passes_make_the_choices_of_separate_fits(toy):
    """Methods that share a sampler and head kind train in one pass; each result makes
    the choices of the method fitted alone and its logits agree to float rounding (same
    batches, independent updates)."""
    sched = Schedule(epochs=3)
    fused = compare(
        toy, list(METHODS.values()), sched, lrs=(5e-3, 5e-2), fits_per_method=None
    )  # whole grids, as fit_method
    x = toy.splits["test"][0]
    for r in fused:
        alone = fit_method(METHODS[r.method], toy, sched, lrs=(5e-3, 5e-2))
        _same_choices(r, alone)
        np.testing.assert_allclose(logits_of(r.head, x), logits_of(alone.head, x), rtol=1e-4, atol=1e-4)


def test_a_small_memory_budget_trains_in_chunks_with_identical_results(toy):
    from lort.stage2.plan import make_plan, setting_bytes

    sched = Schedule(epochs=2)
    methods = [METHODS[m] for m in ("ce", "lort", "wb", "crt", "mislas")]
    whole = compare(toy, methods, sched, lrs=(5e-3, 5e-2), fits_per_method=None)
    features = sum(a.nbytes + b.nbytes for a, b in toy.splits.values())
    budget = features + 5 * setting_bytes(toy.num_classes, toy.dim, sched.batch_size)
    plan = make_plan(methods, toy, sched, (5e-3, 5e-2), budget_bytes=budget)
    assert plan.max_settings == 5 and max(p.settings for p in plan.passes) == 5
    assert plan.settings == sum(len(r.search) for r in whole)
    chunked = compare(toy, methods, sched, lrs=(5e-3, 5e-2), memory_budget=budget, fits_per_method=None)
    assert _rows(chunked) == _rows(whole)
    with pytest.raises(LortError, match=r"stage 2 needs .* MiB for one setting .* the memory budget leaves"):
        make_plan(methods, toy, sched, (5e-3,), budget_bytes=features + 10)


def test_compare_prints_its_plan_and_dry_run_stops_there(tmp_path, toy, capsys):
    path = tmp_path / "f.npz"
    toy.save(path)
    out = tmp_path / "cmp"
    assert main(["compare", "--features", str(path), "--out", str(out), "--epochs", "2", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "plan: " in err and "FLOP" in err and "peak memory" in err and "predicted:" in err
    assert not out.exists()
    assert main(["compare", "--features", str(path), "--out", str(out), "--memory-budget", "0.001"]) == 2
    assert "memory budget leaves" in capsys.readouterr().err


def test_feature_files_are_memory_mapped_not_copied(tmp_path, toy, monkeypatch):
    """Large arrays of a feature file are mapped from the file (copy-on-write): loading
    and training read the pages in place, and writing to them never changes the file."""
    import lort.io
    from lort.data.features import load_features

    monkeypatch.setattr(lort.io, "MAP_AT_BYTES", 1)  # the toy set is small: map everything
    path = tmp_path / "f.npz"
    toy.save(path)
    fs = load_features(path)
    x = fs.splits["train"][0]
    assert isinstance(x, np.memmap) and x.filename == path.resolve()
    assert np.array_equal(x, toy.splits["train"][0]) and fs.classes == toy.classes
    t = torch.as_tensor(x)  # no copy: the tensor is the mapping
    assert t.data_ptr() == x.ctypes.data
    x[0, 0] += 1.0  # copy-on-write: this process only
    assert load_features(path).splits["train"][0][0, 0] == toy.splits["train"][0][0, 0]
    sched = Schedule(epochs=2)
    mapped = compare(load_features(path), [METHODS["ce"], METHODS["lort"]], sched, lrs=(5e-2,))
    monkeypatch.setattr(lort.io, "MAP_AT_BYTES", 1 << 62)  # read into memory: the same results
    read = compare(load_features(path), [METHODS["ce"], METHODS["lort"]], sched, lrs=(5e-2,))
    assert _rows(mapped) == _rows(read)
    np.savez_compressed(
        tmp_path / "c.npz",
        **{f"{s}_{k}": a for s, (x_, y_) in toy.splits.items() for k, a in (("features", x_), ("labels", y_))},
    )
    assert not isinstance(load_features(tmp_path / "c.npz").splits["train"][0], np.memmap)  # compressed: read


def test_non_finite_features_are_found_block_by_block():
    from lort.data.features import first_nonfinite_row

    x = np.zeros((50, 3), np.float32)
    assert first_nonfinite_row(x, rows=7) is None
    x[23, 1] = np.inf
    x[40, 0] = np.nan
    assert first_nonfinite_row(x, rows=7) == 23 == first_nonfinite_row(x, rows=1000)


def test_centre_and_spread_in_blocks_equals_the_whole():
    from lort.stage2.heads import centre_and_spread

    x = torch.randn(1001, 17) * 3 + 1
    c, s = centre_and_spread(x, rows=64)
    assert torch.equal(c, x.mean(0))
    assert torch.equal(s, (x - x.mean(0)).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("kind", ["linear", "centred", "cosine", "lws"])
def test_the_loop_equals_autograd_and_torch_sgd_for_every_head_kind(kind, closed_form):
    """The loop computes the gradients itself (the loss's for the logits in closed form, or
    by autograd for a plain callable; back through the head's finish; the weight gradient
    as one matrix product folded into the momentum); every head kind must train as autograd
    through ``head(x)`` and ``torch.optim.SGD`` (momentum, weight decay, cosine schedule)."""
    import math

    from lort.stage2.heads import CentredHead, CosineHead, LWSHead

    fs = _toy()
    x, y = (torch.as_tensor(a) for a in fs.splits["train"])
    w, b = torch.as_tensor(fs.init_weight), torch.as_tensor(fs.init_bias)
    build = {
        "linear": lambda: LinearHead(w, b),
        "centred": lambda: CentredHead.from_classifier(w, x),
        "cosine": lambda: CosineHead(w, scale=10.0),
        "lws": lambda: LWSHead(w, b),
    }[kind]
    sched = Schedule(epochs=2, lr=0.05, weight_decay=5e-3, batch_size=32, seed=3)

    def loss(lg, yy, e):
        return O.grouped_cross_entropy(lg, yy)

    head, _ = fit_head(build(), x, y, L.SoftCrossEntropy(1, 5) if closed_form else loss, sched)
    ref = build()
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum, weight_decay=sched.weight_decay)
    gen = torch.Generator().manual_seed(sched.seed)
    steps = math.ceil(len(y) / sched.batch_size)
    step = 0
    for _ in range(sched.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), sched.batch_size):
            idx = order[start : start + sched.batch_size]
            for group in opt.param_groups:
                group["lr"] = sched.lr * 0.5 * (1 + math.cos(math.pi * step / (steps * sched.epochs)))
            opt.zero_grad()
            loss(ref(x[idx]), y[idx], 0).sum().backward()
            opt.step()
            step += 1
    for (name, got), (_, want) in zip(head.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (kind, name, (got - want).abs().max())
    start = dict(build().named_parameters())
    assert all(not torch.equal(p, start[n]) for n, p in ref.named_parameters() if p.requires_grad)  # it trained


def test_npz_written_block_by_block_reads_back_and_a_short_one_leaves_nothing(tmp_path):
    from lort.io import load_npz, save_npz

    a = np.arange(60, dtype=np.float32).reshape(12, 5)
    path = tmp_path / "b.npz"
    save_npz(path, logits=(a.shape, np.float32, (a[i : i + 5] for i in range(0, 12, 5))), labels=np.arange(12))
    with np.load(path) as d:
        assert np.array_equal(d["logits"], a) and np.array_equal(d["labels"], np.arange(12))
    assert np.array_equal(load_npz(path)["logits"], a)
    with pytest.raises(ValueError, match="blocks held 10 values"):
        save_npz(tmp_path / "short.npz", logits=((3, 5), np.float32, iter([a[:2]])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npz"]  # no partial or temporary file left


def test_large_heap_blocks_are_returned_unless_the_user_set_the_threshold(monkeypatch):
    import sys

    from lort.runtime.heap import return_large_blocks

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_large_blocks.__wrapped__() is False  # the user's setting is kept
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    glibc = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())
    assert return_large_blocks.__wrapped__() is glibc


def test_the_plan_predicts_matrix_work_plus_measured_per_step_overhead(toy):
    from lort.stage2.plan import StepCosts, make_plan, step_costs

    methods = [METHODS[m] for m in ("ce", "lort_reference", "wb", "crt")]
    plan = make_plan(methods, toy, Schedule(epochs=2), (5e-3, 5e-2), fits_per_method=6, seeds=2)
    costs = StepCosts(step=1e-3, loss=5e-4)
    per_pass = {tuple(p.methods): p for p in plan.passes}
    assert set(per_pass) == {("ce", "lort_reference", "wb"), ("crt",)}
    # the per-step overhead of both passes, divided among the passes trained at once
    assert plan.workers == min(2, torch.get_num_threads())
    expected = plan.flop / 1e9 + plan.steps_per_epoch * 2 * 2 * ((1e-3 + 2 * 5e-4) + 1e-3) / plan.workers
    assert plan.predicted_seconds(1e9, costs) == pytest.approx(expected)
    assert "predicted: at least" in plan.describe(1e9, costs)
    measured = step_costs(steps=5)
    assert measured.step > 0 and measured.loss >= 0


def _loss_cases(g, k, y, dtype=torch.float32):
    """(closed-form loss, the same loss as a plain function for autograd), per loss family."""
    gen = torch.Generator().manual_seed(5)
    prior = torch.log(torch.rand(k, generator=gen, dtype=dtype) + 0.1)
    eps = torch.rand(g, k, generator=gen, dtype=dtype) * 0.5
    w = torch.rand(g, k, generator=gen, dtype=dtype) + 0.5
    m = torch.rand(k, generator=gen, dtype=dtype) * 5
    gamma = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=dtype)[:g]
    onehot = F.one_hot(y, k).to(dtype)

    def smoothed(lg):
        e = eps[:, y].unsqueeze(2)
        return O.grouped_soft_cross_entropy(lg, (1 - e) * onehot + e / k)

    return {
        "ce": (L.SoftCrossEntropy(g, k), lambda lg: O.grouped_cross_entropy(lg, y)),
        "smoothed": (L.SoftCrossEntropy(g, k, smoothing=eps), smoothed),
        "offset": (L.SoftCrossEntropy(g, k, offset=prior), lambda lg: O.grouped_cross_entropy(lg + prior, y)),
        "reweighted": (
            L.SoftCrossEntropy(g, k, class_weight=w, by_batch=True),
            lambda lg: O.grouped_cross_entropy(lg, y, w, reduction="batch"),
        ),
        "margin": (
            L.SoftCrossEntropy(g, k, margin=m, class_weight=w[0]),
            lambda lg: O.grouped_cross_entropy(lg - (onehot * m[y][:, None]).unsqueeze(0), y, w[0]),
        ),
        "focal": (L.FocalLoss(gamma), lambda lg: O.grouped_focal(lg, y, gamma)),
        "wb": (L.CBSoftmaxBCE(w[0]), lambda lg: O.grouped_cb_softmax_bce(lg, y, w[0])),
    }


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_closed_form_losses_equal_autograd(scale):
    """Each loss family's value and gradient for the logits, in closed form, equal autograd
    through the plain definition (float64: the formulas, not float32's roundings near p = 1)."""
    g, b, k = 4, 24, 7
    torch.manual_seed(0)
    y = torch.randint(0, k, (b,))
    logits = (torch.randn(g, k, b) * scale).transpose(1, 2).double()  # class-major, as in the loop
    for name, (closed, plain) in _loss_cases(g, k, y, torch.float64).items():
        value, grad = closed.value_and_grad(logits.clone(), y, 0)
        want_value, want_grad = L.value_and_grad(lambda lg, yy, e, f=plain: f(lg), logits, y, 0)
        assert torch.allclose(value, want_value, rtol=1e-9, atol=1e-12), name
        assert torch.allclose(grad, want_grad, rtol=1e-9, atol=1e-12), name


def test_a_fused_loss_equals_its_blocks_and_keeps_the_logits_layout():
    g, b, k = 4, 24, 7
    torch.manual_seed(1)
    y = torch.randint(0, k, (b,))
    cases = _loss_cases(g, k, y)
    order = ["ce", "smoothed", "wb", "offset", "reweighted", "focal", "margin"]
    logits = torch.randn(g * len(order), k, b).transpose(1, 2)
    fused = L.FusedLoss([cases[n][0] for n in order], [g] * len(order))
    assert len(fused.blocks) == 5  # ce + smoothed, wb, offset + reweighted, focal, margin
    value, grad = fused.value_and_grad(logits, y, 0)
    assert grad.stride() == logits.stride()
    for i, name in enumerate(order):
        v, gr = cases[name][0].value_and_grad(logits[i * g : (i + 1) * g], y, 0)
        assert torch.equal(value[i * g : (i + 1) * g], v) and torch.equal(grad[i * g : (i + 1) * g], gr), name


def test_ldam_reweights_from_its_deferred_epoch_only():
    g, b, k = 2, 16, 5
    y = torch.arange(b) % k
    w = torch.rand(k) + 0.5
    loss = L.SoftCrossEntropy(g, k, class_weight=w, reweight_from=3)
    logits = torch.randn(g, b, k)
    assert torch.equal(loss(logits, y, 2), L.SoftCrossEntropy(g, k)(logits, y, 2))
    assert torch.allclose(loss(logits, y, 3), O.grouped_cross_entropy(logits, y, w))


@pytest.mark.parametrize("kind", ["linear", "centred", "cosine", "lws"])
def test_each_heads_closed_form_backward_equals_autograd(kind):
    from lort.stage2.heads import CentredHead, CosineHead, Head, LWSHead

    torch.manual_seed(2)
    w, b, x = torch.randn(5, 8), torch.randn(5), torch.randn(16, 8)
    head = {
        "linear": lambda: LinearHead(w, b, 3),
        "centred": lambda: CentredHead.from_classifier(w, x, 3),
        "cosine": lambda: CosineHead(w, scale=10.0, groups=3),
        "lws": lambda: LWSHead(w, b, 3),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the settings differ
    z = head.products(head.inputs(x))
    norms = head.weight.norm(dim=2) if head.uses_norms else None
    dlogits = torch.randn_like(z)
    got = head.finish_backward(z, norms, dlogits)
    got_grads = [p.grad.clone() for p in head.parameters() if p.requires_grad and p is not head.weight]
    want = Head.finish_backward(head, z, norms, dlogits)
    want_grads = [p.grad for p in head.parameters() if p.requires_grad and p is not head.weight]
    for a, c in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        assert (a is None and c is None) or torch.allclose(a, c, rtol=1e-5, atol=1e-6), kind


def test_small_passes_trained_concurrently_equal_the_serial_run(toy, monkeypatch):
    """Small passes run in forked processes, one thread each; the results (rows, searches,
    logits) equal the passes trained one after the other in this process, bit for bit."""
    from lort.stage2 import engine as C

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sched = Schedule(epochs=2)
        methods = list(METHODS.values())
        seen = []
        real = C.concurrent_passes
        monkeypatch.setattr(C, "concurrent_passes", lambda *a: seen.append(real(*a)) or seen[-1])
        forked = compare(toy, methods, sched, lrs=(5e-3, 5e-2))
        assert seen[-1] == 2
        monkeypatch.setattr(C, "concurrent_passes", lambda *a: 1)
        serial = compare(toy, methods, sched, lrs=(5e-3, 5e-2))
    finally:
        torch.set_num_threads(before)
    assert _rows(forked)[1] == _rows(serial)[1]
    x = toy.splits["test"][0]
    for a, b in zip(forked, serial, strict=True):
        assert a.row()["test_acc"] == b.row()["test_acc"], a.method
        assert np.array_equal(logits_of(a.head, x), logits_of(b.head, x)), a.method


# ----------------------------------------------------------------------------- selection on validation


def test_the_selection_rule_breaks_accuracy_ties_by_log_loss_beyond_its_tolerance_only():
    from lort.stage2.selection import LOG_LOSS_RTOL, better

    tiny = 0.1 * LOG_LOSS_RTOL  # a last-bit difference: never decides
    a = torch.tensor([[0.5, -1.0], [0.5, -2.0], [0.6, -9.0], [0.4, 0.0], [0.5, -1.5], [0.5, -1.5 * (1 - tiny)]])
    b = torch.tensor([[0.5, -1.5]] * 6)
    assert better(a, b).tolist() == [True, False, True, False, False, False]
    assert better(b[:1], a[5:]).tolist() == [False]  # neither beats the other: the earlier is kept


def test_best_index_scans_in_order_as_the_loop_does():
    from lort.stage2.selection import LOG_LOSS_RTOL, best_index, best_record

    tiny = 0.1 * LOG_LOSS_RTOL
    rows = [[0.5, -2.0], [0.5, -1.0], [0.5, -1.0 * (1 - tiny)], [0.4, 0.0]]
    assert best_index(rows) == 1  # the later near-equal log-loss does not displace it
    assert best_index([[0.5, -1.0], [0.7, -5.0]]) == 1
    assert best_index(np.array([0.2, 0.3, 0.3])) == 1
    records = [{"val_balanced_acc": 0.5, "val_log_loss": 2.0}, {"val_balanced_acc": 0.5, "val_log_loss": 1.0}]
    assert best_record(records) == 1 and best_record([{"val_balanced_acc": None, "val_log_loss": None}]) == 0


def test_validation_scores_are_balanced_accuracy_then_minus_balanced_log_loss():
    from lort.stage2.heads import LinearHead
    from lort.stage2.selection import head_validation_scores

    rng = np.random.default_rng(0)
    k, d = 4, 5
    y = torch.as_tensor(np.repeat(np.arange(k), [6, 3, 2, 1]))
    x = torch.as_tensor(rng.normal(size=(len(y), d)).astype(np.float32))
    head = LinearHead(torch.randn(k, d), torch.randn(k), groups=3)
    with torch.no_grad():
        head.weight.add_(torch.randn_like(head.weight))
    got = head_validation_scores(head, x, y, k, max_logits=3 * k * 5)  # chunks of 5 rows
    pred = head(x).argmax(2)
    want = torch.stack([torch.stack([(p[y == c] == c).float().mean() for c in range(k)]).mean() for p in pred])
    torch.testing.assert_close(got[:, 0], want.to(got.dtype))
    nll = -F.log_softmax(head(x), dim=2).gather(2, y.expand(3, -1).unsqueeze(2)).squeeze(2)
    per_class = torch.stack([nll[:, y == c].mean(1) for c in range(k)], dim=1)
    torch.testing.assert_close(got[:, 1], -per_class.mean(1).to(got.dtype))


def test_ties_in_balanced_accuracy_go_to_the_lower_log_loss():
    from lort.stage2.heads import LinearHead
    from lort.stage2.losses import SoftCrossEntropy
    from lort.stage2.trainer import fit_head

    x = torch.randn(40, 3)
    y = torch.arange(40) % 2
    calls = iter([[[0.5, -2.0]], [[0.5, -1.0]], [[0.5, -1.5]], [[0.4, 0.0]]])
    weights = []

    def score(head):
        weights.append(head.weight.detach().clone())
        return torch.tensor(next(calls))

    head, curves = fit_head(
        LinearHead(torch.zeros(2, 3), torch.zeros(2)),
        x,
        y,
        SoftCrossEntropy(1, 2),
        Schedule(epochs=4, batch_size=8),
        score_fn=score,
        lr=0.1,
    )
    assert curves.shape == (4, 1, 2)
    torch.testing.assert_close(head.weight, weights[1])  # epoch 2: tied accuracy, lowest log-loss
    from lort.stage2.selection import best_index

    assert best_index(curves[:, 0]) == 1 and best_index(curves[:, 0, 0]) == 0


@pytest.mark.parametrize("estimates", ["pooled", "equal"])
def test_discriminant_directions_follow_their_stated_estimates(estimates):
    from lort.stage2.heads import discriminant_directions

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = torch.cat([torch.zeros(250), torch.ones(40), torch.full((10,), 2)]).long()
    x[y == 1] += 2
    x[y == 2] -= 2
    got = discriminant_directions(x, y, 3, shrink=1.0, estimates=estimates).double().numpy()
    xs, ys = x.double().numpy(), y.numpy()
    mu = np.stack([xs[ys == c].mean(0) for c in range(3)])
    if estimates == "pooled":  # every sample counts once: the head class dominates centre and covariance
        m = xs.mean(0)
        s = sum((xs[ys == c] - mu[c]).T @ (xs[ys == c] - mu[c]) for c in range(3)) / len(xs)
    else:  # every class counts once
        m = mu.mean(0)
        s = np.mean([np.cov(xs[ys == c].T, bias=True) for c in range(3)], axis=0)
    s = s + np.eye(4) * np.trace(s) / 4
    np.testing.assert_allclose(got, np.linalg.solve(s, (mu - m).T).T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="estimates"):
        discriminant_directions(x, y, 3, estimates="weighted")
