"""LORT for users' own features and models: the estimator API, model surgery, extraction
from a user's model file, list-file datasets and distributed extraction."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lort
import lort.model_files
from lort.cli import main
from lort.data.features import load_features
from lort.errors import LortError
from lort.estimator import InputError, LogitsRetargetingClassifier, RetrainingClassifier
from lort.stage2.methods import METHODS

from .conftest import make_image_tree


def long_tailed_blobs(seed=0, counts=(300, 100, 30, 10, 6), dim=16, val_per_class=20, labels=None):
    rng = np.random.default_rng(seed)
    k = len(counts)
    means = rng.normal(size=(k, dim)) * 1.5
    names = labels or [f"class {i}" for i in range(k)]
    x = np.concatenate([means[i] + rng.normal(size=(n, dim)) for i, n in enumerate(counts)]).astype(np.float32)
    y = np.concatenate([[names[i]] * n for i, n in enumerate(counts)])
    xv = np.concatenate([means[i] + rng.normal(size=(val_per_class, dim)) for i in range(k)]).astype(np.float32)
    yv = np.repeat(names, val_per_class)
    return x, y, xv, yv


# ----------------------------------------------------------------------------- estimator


def test_string_labels_map_to_sorted_classes_and_predictions_use_them():
    x, y, xv, yv = long_tailed_blobs(labels=["zebra", "ant", "moth", "bee", "yak"])
    clf = LogitsRetargetingClassifier().fit(x, y)
    assert clf.classes_.tolist() == ["ant", "bee", "moth", "yak", "zebra"]
    assert clf.coef_.shape == (5, 16) and clf.intercept_.shape == (5,) and clf.n_features_in_ == 16
    pred = clf.predict(xv)
    assert set(pred) <= set(clf.classes_)
    assert clf.score(xv, yv) > 0.8
    proba = clf.predict_proba(xv)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert (clf.classes_[proba.argmax(1)] == pred).all()
    assert clf.init_.startswith("cross-entropy fit")  # no classifier given: its own CE fit first


def test_torch_tensors_and_numpy_arrays_give_the_same_classifier():
    x, y, _, _ = long_tailed_blobs(labels=[0, 1, 2, 3, 4])
    y = y.astype(np.int64)
    a = LogitsRetargetingClassifier().fit(x, y)
    b = LogitsRetargetingClassifier().fit(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.predict(x), b.predict(torch.from_numpy(x)))


def test_lort_moves_the_given_classifier_towards_the_retargeted_logits():
    """Warm start from a given classifier; LORT's target shrinks the logits' spread."""
    x, y, _, _ = long_tailed_blobs()
    ce = RetrainingClassifier("ce", epochs=10, lr=0.05).fit(x, y)
    lo = LogitsRetargetingClassifier(init_coef=ce.coef_, init_intercept=ce.intercept_, lr=0.05).fit(x, y)
    assert lo.init_ == "the given init_coef / init_intercept"
    spread = lambda c: np.abs(c.decision_function(x)).mean()  # noqa: E731
    assert spread(lo) < 0.5 * spread(ce)
    # the same start with s = 0 (plain CE) keeps the spread
    plain = LogitsRetargetingClassifier(0.0, init_coef=ce.coef_, init_intercept=ce.intercept_, lr=0.05).fit(x, y)
    assert spread(plain) > spread(lo)


def test_warm_start_continues_from_the_previous_fit():
    x, y, _, _ = long_tailed_blobs()
    clf = LogitsRetargetingClassifier(epochs=2).fit(x, y)
    first = clf.coef_.copy()
    clf.set_params(warm_start=True, epochs=0)  # zero epochs: the previous classifier, unchanged
    clf.fit(x, y)
    np.testing.assert_allclose(clf.coef_, first, rtol=1e-6)
    assert clf.init_ == "warm start (previous fit)"


def test_listed_hyperparameters_are_chosen_on_validation_data():
    x, y, xv, yv = long_tailed_blobs()
    clf = LogitsRetargetingClassifier(smooth=[0.5, 0.9, 0.98], lr=[5e-4, 5e-2]).fit(x, y, X_val=xv, y_val=yv)
    assert clf.best_params_["smooth"] in (0.5, 0.9, 0.98) and clf.best_params_["lr"] in (5e-4, 5e-2)
    assert 1 <= clf.best_params_["epoch"] <= 20
    assert len(clf.search_results_) == 6
    best = max(r["val_balanced_acc"] for r in clf.search_results_)
    assert clf.validation_score_ == pytest.approx(best)
    with pytest.raises(InputError, match="smooth, lr list several values.*pass X_val and y_val"):
        LogitsRetargetingClassifier(smooth=[0.5, 0.9], lr=[1e-3, 1e-2]).fit(x, y)


def test_target_ratio_is_the_k_independent_setting():
    x, y, _, _ = long_tailed_blobs()
    a = LogitsRetargetingClassifier(target_ratio=3.0).fit(x, y)
    s = 5 / (5 + 3.0 - 1)  # s = K / (K + r - 1)
    b = LogitsRetargetingClassifier(smooth=s).fit(x, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_works_through_the_estimator(name):
    x, y, xv, yv = long_tailed_blobs()
    clf = RetrainingClassifier(name, epochs=3, lr=[5e-4, 5e-2]).fit(x, y, X_val=xv, y_val=yv)
    assert clf.coef_.shape == (5, 16)
    assert clf.score(xv, yv) > 0.5
    clone = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clone.predict(xv), clf.predict(xv))


def test_without_validation_a_method_runs_at_its_default_and_lists_need_validation():
    x, y, xv, yv = long_tailed_blobs()
    clf = RetrainingClassifier("tau_norm").fit(x, y)
    assert clf.best_params_["tau"] == METHODS["tau_norm"].param("tau").source_default == 1.0
    clf = RetrainingClassifier("tau_norm", params={"tau": 0.5}).fit(x, y)
    assert clf.best_params_["tau"] == 0.5
    with pytest.raises(InputError, match="tau list several values to search; pass X_val and y_val"):
        RetrainingClassifier("tau_norm", params={"tau": [0.5, 1.0]}).fit(x, y)
    with pytest.raises(InputError, match="method tau_norm has no hyperparameter 'beta' \\(its hyperparameters: tau\\)"):
        RetrainingClassifier("tau_norm", params={"beta": 0.9}).fit(x, y)
    with pytest.raises(InputError, match=r"method cb_reweight: beta must lie in \[0, 1\), got 1.5"):
        RetrainingClassifier("cb_reweight", params={"beta": 1.5}).fit(x, y)
    with pytest.raises(InputError, match="unknown stage-2 method 'nope'"):
        RetrainingClassifier("nope").fit(x, y)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: LogitsRetargetingClassifier().fit(x[:-1], y), r"y has \d+ labels but X has \d+ rows"),
        (lambda x, y: LogitsRetargetingClassifier().fit(x[:, 0], y), "Expected 2D array, got 1D array"),
        (lambda x, y: LogitsRetargetingClassifier().fit(np.where(x > 3, np.nan, x), y), "contains NaN"),
        (lambda x, y: LogitsRetargetingClassifier(smooth=1.0).fit(x, y), r"smooth must lie in \[0, 1\)"),
        (lambda x, y: LogitsRetargetingClassifier(target_ratio=0.5).fit(x, y), r"target_ratio must lie in \(1, inf\), got 0.5"),
        (lambda x, y: LogitsRetargetingClassifier(lr=0).fit(x, y), "lr must be > 0"),
        (lambda x, y: RetrainingClassifier("lort", params={"smooth": 1.5}).fit(x, y), r"method lort: smooth must lie in \[0, 1\)"),
        (lambda x, y: LogitsRetargetingClassifier(epochs=-1).fit(x, y), "stage-2 epochs must be an integer >= 0"),
        (lambda x, y: LogitsRetargetingClassifier(momentum=1.0).fit(x, y), r"stage-2 momentum must lie in \[0, 1\)"),
        (lambda x, y: LogitsRetargetingClassifier(init_coef=np.zeros((3, 16))).fit(x, y), r"init_coef has shape \(3, 16\)"),
        (lambda x, y: LogitsRetargetingClassifier().fit(x, np.full(len(x), 0.5)), "Unknown label type: continuous"),
        (lambda x, y: LogitsRetargetingClassifier().fit(x, y, X_val=x), "give both X_val and y_val"),
        (lambda x, y: LogitsRetargetingClassifier().fit(x, y, X_val=x[:2], y_val=["class 0", "other"]), "y_val holds label 'other'"),
        (lambda x, y: LogitsRetargetingClassifier().predict(x), "not fitted yet"),
        (lambda x, y: LogitsRetargetingClassifier().fit(x, y).predict(x[:, :3]), "X has 3 features, but LogitsRetargetingClassifier is expecting 16"),
    ],
)  # fmt: skip
def test_bad_estimator_input_is_one_clear_value_error(call, message):
    x, y, _, _ = long_tailed_blobs()
    with pytest.raises(ValueError, match=message):
        call(x, y)


def test_scikit_learn_check_estimator_passes():
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    for est in (LogitsRetargetingClassifier(), RetrainingClassifier("ce"), RetrainingClassifier("ldam_drw")):
        results = estimator_checks.check_estimator(est, on_fail=None)
        failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
        assert not failed, failed
        assert sum(r["status"] == "passed" for r in results) > 40


def test_estimator_works_without_scikit_learn(tmp_path):
    """The contract's own fallback (get_params / set_params / score) when scikit-learn is absent."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import numpy as np\n"
        "from lort import LogitsRetargetingClassifier as C\n"
        "rng = np.random.default_rng(0); x = rng.normal(size=(600, 4)); y = np.repeat(['a', 'b', 'c'], 200)\n"
        "x[y == 'b', 0] += 6; x[y == 'c', 1] += 6\n"  # classes in general position (see CentredHead)
        "c = C(smooth=0.9).set_params(epochs=5)\n"
        "assert c.get_params()['smooth'] == 0.9 and c.get_params()['epochs'] == 5\n"
        "assert type(c).__mro__[-2].__module__ == 'lort.estimator'\n"
        "print(round(c.fit(x, y).score(x, y), 2), repr(C()))\n"
        "try:\n    c.set_params(bogus=1)\nexcept ValueError as e:\n    print('refused', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    score, rest = res.stdout.split(" ", 1)
    assert float(score) > 0.9
    assert "LogitsRetargetingClassifier(" in rest and "refused invalid parameter 'bogus'" in rest


# ----------------------------------------------------------------------------- model surgery


class UserNet(nn.Module):
    """A user's network: a body and a classifier named ``head`` (not ``fc``)."""

    def __init__(self, k=4, bias=True):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.BatchNorm1d(32))
        self.head = nn.Linear(32, k, bias=bias)

    def forward(self, x):
        return self.head(self.body(x))


def _user_loader(n=(200, 80, 30, 8), seed=0, shuffle=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(n), 8, generator=gen)
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(n)])
    x += y[:, None].float()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=shuffle)


def test_retrain_classifier_replaces_only_the_last_layer():
    torch.manual_seed(0)
    net = UserNet()
    body = {k: v.clone() for k, v in net.body.state_dict().items()}
    w0 = net.head.weight.detach().clone()
    net.train()
    out, est = lort.retrain_classifier(net, _user_loader(), val_loader=_user_loader((10, 10, 10, 10), 1),
                                       smooth=[0.9, 0.98], return_estimator=True)  # fmt: skip
    assert out is net and net.training  # the mode is restored
    for k, v in net.body.state_dict().items():  # frozen, BatchNorm statistics untouched (eval mode)
        assert torch.equal(v, body[k]), k
    assert not any(p.requires_grad for p in net.body.parameters())
    assert not torch.equal(net.head.weight, w0)
    np.testing.assert_allclose(net.head.weight.detach().numpy(), est.coef_, rtol=1e-6)
    assert est.init_ == "the given init_coef / init_intercept"
    # the model now computes the estimator's logits
    x = torch.randn(5, 8)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), est.decision_function(net.body(x).numpy()), rtol=1e-4, atol=1e-5)


def test_retrain_classifier_by_name_other_methods_and_bias_free_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    lort.retrain_classifier(net, _user_loader(), layer="3", method="crt", epochs=2)
    assert isinstance(net[3], nn.Linear) and net[3].bias is not None  # replaced: the new classifier has a bias


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (nn.Sequential(nn.Conv1d(1, 2, 3)), {}, "Sequential has no nn.Linear layer to re-train"),
        (UserNet(), {"layer": "body.1"}, "'body.1' is a ReLU, not an nn.Linear"),
        (UserNet(), {"layer": "classifier"}, "no submodule 'classifier'; its linear layers: body.0, head"),
        (UserNet(k=3), {}, "label 3 outside the 3 outputs of layer 'head'"),
        (UserNet(k=6), {}, "no samples of class 4"),
        (UserNet(), {"method": "ncm"}, "expects L2-normalised features"),
    ],
)
def test_retrain_classifier_bad_input(model, kwargs, message):
    with pytest.raises(LortError, match=message):
        lort.retrain_classifier(model, _user_loader(), **kwargs)


# ----------------------------------------------------------------------------- feature files from user models


class TinyConvNet(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, k)

    def forward(self, x):
        return self.classifier(self.features(x))


def _imagenet_lt_tree(tmp_path: Path, counts=None) -> Path:
    """An ImageNet-LT-style root with the official list-file names, a folder with spaces."""
    counts = counts or {"a": (12, 3), "b": (6, 3), "c": (3, 3)}
    root = make_image_tree(tmp_path / "imagenet lt", counts, size=40, fmt="JPEG")
    lines = {"train": [], "val": [], "test": []}
    for k, cls in enumerate(sorted(counts)):
        files = sorted((root / "train" / cls).iterdir())
        for f in files[:-1]:
            lines["train"].append(f"train/{cls}/{f.name} {k}")
        lines["val"].append(f"train/{cls}/{files[-1].name} {k}")
        for f in sorted((root / "test" / cls).iterdir()):
            lines["test"].append(f"test/{cls}/{f.name} {k}")
    spaced = root / "train" / "a b"
    spaced.mkdir()
    (root / "train" / "a" / "0000.jpg").rename(spaced / "first image.jpg")
    lines["train"][0] = "train/a b/first image.jpg 0"
    for split, rows in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def _save_user_model(tmp_path, kind: str = "module") -> Path:
    torch.manual_seed(0)
    net = TinyConvNet().eval()
    path = tmp_path / f"net.{kind}"
    if kind == "torchscript":
        with pytest.warns(DeprecationWarning):
            torch.jit.save(torch.jit.script(net.features), str(path))
    elif kind == "export":
        batch = torch.export.Dim("batch")  # exported with a dynamic batch dimension
        program = torch.export.export(net.features, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    else:
        torch.save(net, path)
    return path


@pytest.mark.parametrize("kind", ["module", "torchscript", "export"])
def test_extract_from_a_user_model_file_on_an_imagenet_lt_style_list_dataset(tmp_path, capsys, kind):
    scripted = kind != "module"
    root = _imagenet_lt_tree(tmp_path)
    model = _save_user_model(tmp_path, kind)
    out = tmp_path / "feats.npz"
    args = ["extract", "--model", str(model), "--dataset", "imagenet_lt", "--root", str(root), "--num-classes", "3",
            "--profile", "none", "--input-size", "32", "--workers", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    fs = load_features(out)
    assert fs.dim == 8 and fs.num_classes == 3
    assert fs.train_counts.tolist() == [11, 5, 2] and len(fs.splits["val"][1]) == 3 and len(fs.splits["test"][1]) == 9
    # the same features as running the model by hand on the standard eval transform
    from lort.data.transforms import ImagePathDataset

    net = (
        torch.load(model, weights_only=False).features if kind == "module" else lort.model_files.load_module_file(model)
    )
    ds = ImagePathDataset([str(root / "test/a/0000.jpg")], np.zeros(1), train=False, size=32)
    with torch.no_grad():
        ref = net(ds[0][0][None]).numpy()
    np.testing.assert_allclose(fs.splits["test"][0][0], ref[0], rtol=1e-2, atol=1e-2)  # bf16 autocast where native
    assert (fs.init_weight is None) == scripted  # a saved nn.Module's classifier is kept for the warm start
    assert (
        main(["retrain", "--features", str(out), "--method", "lort", "--out", str(tmp_path / "rt"), "--epochs", "2"])
        == 0
    )
    assert (tmp_path / "rt" / "summary.json").is_file()
    if kind == "module":  # the file carries the model's own classifier: analyse it directly
        assert main(["analyze", "--features", str(out), "--split", "test"]) == 0
        assert "logits_magnitude " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: (root / "train" / "b" / "0001.jpg").unlink(), r"ImageNet_LT_train.txt:\d+: image .*0001.jpg does not exist"),
        (lambda root: (root / "ImageNet_LT_test.txt").write_bytes(b"\xff\xfe\x00bad"), r"ImageNet_LT_test.txt: cannot read list file"),
        (lambda root: (root / "ImageNet_LT_val.txt").unlink(), r"ImageNet_LT_val.txt: cannot read list file"),
        (lambda root: (root / "test" / "c" / "0002.jpg").write_bytes(b"not a jpeg"), r"0002.jpg: unreadable image"),
    ],
)  # fmt: skip
def test_list_dataset_problems_fail_clearly(tmp_path, capsys, mutate, message):
    root = _imagenet_lt_tree(tmp_path)
    model = _save_user_model(tmp_path)
    mutate(root)
    out = tmp_path / "feats.npz"
    code = main(["extract", "--model", str(model), "--dataset", "imagenet_lt", "--root", str(root),
                 "--num-classes", "3", "--profile", "none", "--input-size", "32", "--workers", "0", "--out", str(out)])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars: one line
    assert code == 2 and last.startswith("lort: error: ")
    assert re.search(message, last), last
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: torch.save({"weight": torch.zeros(2)}, p), "holds a dict, not an nn.Module (a state dict"),
        (lambda p: p.write_bytes(b"garbage"), "not a torch.export, TorchScript or saved nn.Module file"),
    ],
)
def test_bad_model_files_fail_clearly(tmp_path, capsys, make, message):
    path = tmp_path / "model.pt"
    make(path)
    code = main(["extract", "--model", str(path), "--dataset", "imagefolder", "--root", str(tmp_path), "--out", str(tmp_path / "f.npz")])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err


def test_distributed_extraction_equals_one_process(tmp_path):
    root = _imagenet_lt_tree(tmp_path)
    model = _save_user_model(tmp_path)
    common = ["extract", "--model", str(model), "--dataset", "imagenet_lt", "--root", str(root), "--num-classes", "3",
              "--profile", "none", "--input-size", "32", "--workers", "0"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "lort", *common, "--out", str(tmp_path / "one.npz")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "lort", *common, "--out", str(tmp_path / "two.npz")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert "extracted by 2 processes" in two.stdout
    a, b = load_features(tmp_path / "one.npz"), load_features(tmp_path / "two.npz")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[split][1], b.splits[split][1])
        np.testing.assert_allclose(a.splits[split][0], b.splits[split][0], rtol=1e-5, atol=1e-6)


class _ChannelMeans(torch.nn.Module):
    """A 'pretrained' network that only accepts 64x64 inputs; its features are the channel
    means of the input and of its upper-left quadrant, so the test can recompute them."""

    def forward(self, x):
        torch._check(x.shape[2] == 64)
        return torch.cat([x.mean((2, 3)), x[:, :, :32, :32].mean((2, 3))], dim=1)


def test_extract_resizes_small_images_to_the_models_input_size_and_normalises_as_told(tmp_path, capsys):
    root = make_image_tree(tmp_path / "tree", {"a": (4, 2), "b": (3, 2)}, size=32)
    path = tmp_path / "net64.pt2"
    program = torch.export.export(_ChannelMeans(), (torch.randn(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    torch.export.save(program, str(path))
    common = ["extract", "--model", str(path), "--dataset", "imagefolder", "--root", str(root), "--profile", "none",
              "--val-per-class", "0", "--workers", "0"]  # fmt: skip
    # at the images' own 32 px the network refuses: one line naming the batch shape, exit 2
    assert main([*common, "--out", str(tmp_path / "no.npz")]) == 2
    err = capsys.readouterr().err
    assert "the model failed on an input batch of shape (" in err and ", 3, 32, 32)" in err, err
    assert [ln for ln in err.splitlines() if "error" in ln.lower()] == [err.splitlines()[-1]] and "Traceback" not in err
    out = tmp_path / "f.npz"
    assert main([*common, "--input-size", "64", "--normalize", "none", "--out", str(out)]) == 0
    fs = load_features(out)
    assert fs.meta["input"]["size"] == 64 and fs.meta["input"]["resized"] and fs.meta["input"]["mean"] == [0, 0, 0]
    # recompute one test image by hand: decode, bilinear-antialias resize to 64, no normalisation
    from PIL import Image

    img = np.asarray(Image.open(sorted((root / "test" / "a").iterdir())[0]).convert("RGB"), np.float32) / 255.0
    x = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(64, 64),
                                        mode="bilinear", antialias=True, align_corners=False)  # fmt: skip
    ref = _ChannelMeans()(x)[0].numpy()
    np.testing.assert_allclose(fs.splits["test"][0][0], ref, rtol=1e-2, atol=1e-2)
    # explicit mean/std are applied and recorded; the default for a user's model is ImageNet's
    out2 = tmp_path / "g.npz"
    assert (
        main([*common, "--input-size", "64", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", str(out2)])
        == 0
    )
    np.testing.assert_allclose(load_features(out2).splits["test"][0][0], (ref - 0.5) / 0.25, rtol=1e-2, atol=2e-2)
    out3 = tmp_path / "h.npz"
    assert main([*common, "--input-size", "64", "--out", str(out3)]) == 0
    imagenet = load_features(out3).meta["input"]
    assert imagenet["mean"] == [0.485, 0.456, 0.406] and imagenet["std"] == [0.229, 0.224, 0.225]
    assert load_features(out3).meta["precision"]["dtype"] in ("fp32", "bf16")


@pytest.mark.parametrize("args, message", [
    (["--mean", "0.5,0.5"], "three values"),
    (["--mean", "a,b,c", "--std", "1,1,1"], "--mean takes comma-separated numbers"),
    (["--mean", "0.5,0.5,0.5"], "give both mean and std"),
    (["--std", "0,1,1", "--mean", "0,0,0"], "std values must be > 0"),
    (["--input-size", "0"], "--input-size must be a positive"),
])  # fmt: skip
def test_bad_input_options_of_extract_fail_clearly(tmp_path, capsys, args, message):
    root = make_image_tree(tmp_path / "tree", {"a": (2, 1), "b": (2, 1)}, size=8)
    path = tmp_path / "net.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), path)
    code = main(["extract", "--model", str(path), "--dataset", "imagefolder", "--root", str(root), "--profile", "none",
                 "--val-per-class", "0", "--out", str(tmp_path / "x.npz"), *args])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err
