from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lort.cli import main
from lort.config import load_config
from lort.pipeline import run_pipeline

from .conftest import make_cifar_archive


def _cfg(root, **extra):
    over = {
        "data.root": str(root), "data.max_per_class": 40, "data.imbalance_ratio": 10, "data.val_per_class": 4,
        "stage1.epochs": 2, "stage1.batch_size": 16, "stage1.eval_batch_size": 64,
        "stage2.epochs": 3, "stage2.lrs": [0.005],
    }  # fmt: skip
    over.update(extra)
    return load_config(None, over)


def test_pipeline_end_to_end_and_rerun_skips_done_steps(tmp_path, capsys):
    make_cifar_archive(tmp_path, "cifar10", 50, 5)
    out = tmp_path / "run"
    result = run_pipeline(_cfg(tmp_path), out, "lort run test")
    for name in ("config.yaml", "dataset.json", "environment.json", "features.npz", "analysis.json",
                 "compare/leaderboard.md", "compare/leaderboard.csv", "sweep.json", "sensitivity.json",
                 "report.html", "report.md", "stage1/summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "Leaderboard" in page and "lort run test" in page
    for png in (out / "figures").glob("*.png"):
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] >= 250, png
    assert result["report"] == out / "report.html"
    # stage 1 reports its best validation epoch; stage 2 re-trains on the last epoch's features
    from lort.data.features import load_features
    from lort.runtime.checkpoint import load_model

    summary = json.loads((out / "stage1" / "summary.json").read_text())
    assert summary["selected_checkpoint"] == "best.pt" and "test_from" not in summary  # evaluated directly
    assert json.loads((out / "features.json").read_text())["checkpoint"] == "last.pt"
    last, _ = load_model(out / "stage1" / "last.pt")
    np.testing.assert_array_equal(
        load_features(out / "features.npz").init_weight, last.get_classifier().weight.detach()
    )
    assert "stage 2 re-trains on the features of stage1/last.pt" in (out / "report.md").read_text()
    stamp = {
        p: p.stat().st_mtime_ns
        for p in [
            out / "features.npz",
            out / "stage1" / "last.pt",
            out / "compare" / "leaderboard.json",
        ]
    }
    run_pipeline(_cfg(tmp_path), out, "lort run test")
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing recomputed
    # a damaged feature cache is rebuilt, not trusted
    data = (out / "features.npz").read_bytes()
    (out / "features.npz").write_bytes(data[:-100])
    run_pipeline(_cfg(tmp_path), out, "lort run test")
    assert (out / "features.npz").read_bytes() == data
    assert json.loads((out / "commands.json").read_text()) == ["lort run test"] * 3
    # a stage 1 that traced its test accuracy: the report names the best test epoch as information
    from lort.analysis.report import build_report

    s1 = json.loads((out / "stage1" / "summary.json").read_text())
    trace = {"epochs": 3, "best_epoch": 2, "best_acc": 0.55, "last_acc": 0.5, "note": "information"}
    (out / "stage1" / "summary.json").write_text(json.dumps(s1 | {"test_trace_information": trace}))
    build_report(out)
    assert "(its best test epoch, information only: 55.00% at epoch 2 of the 3 traced)" in (
        (out / "report.md").read_text()
    )
    # a folder that kept only best.pt (as committed result folders do): one error naming the missing file
    (out / "stage1" / "last.pt").unlink()
    from lort.errors import LortError

    with pytest.raises(LortError, match=r"last\.pt: missing, and stage 2 starts from it .* lort compare --checkpoint"):
        run_pipeline(_cfg(tmp_path), out, "lort run test")


@pytest.mark.parametrize(
    "over",
    [{"stage2.checkpoint": "best"}, {"stage2.checkpoint": "last", "data.val_per_class": 0}],
    ids=["best", "last-without-validation"],
)
def test_stage1_test_report_from_the_features_matches_a_direct_evaluation(tmp_path, monkeypatch, over):
    """Where the extraction is the fp32 forward pass and stage 2 starts from the checkpoint stage 1
    reports (its best validation epoch, or its last where there is no validation split), `lort run`
    scores stage 1 on the test split from the extracted features (one pass of the test split, not
    two); the report is the one a direct evaluation of the checkpoint gives."""
    import dataclasses

    import lort.pipeline as pipeline
    import lort.runtime.precision as precision
    from lort.analysis.metrics import accuracy_report
    from lort.data import build_dataset
    from lort.data.features import load_features
    from lort.runtime.checkpoint import load_model
    from lort.stage1.train import predict

    make_cifar_archive(tmp_path, "cifar10", 50, 5)
    cfg = _cfg(tmp_path, **{"stage2.methods": ["ce"], "stage2.sweep": False, **over})
    # as on a CPU without native bf16, whatever this one has: extraction and the shortcut's rule
    # both read the capability, so the extracted features are the fp32 pass the shortcut assumes
    no_bf16 = dataclasses.replace(precision.cpu_capability(), avx512_bf16=False, amx_bf16=False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: no_bf16)
    assert pipeline._test_from_features(cfg)
    run_pipeline(cfg, tmp_path / "run", "lort run test")
    summary = json.loads((tmp_path / "run" / "stage1" / "summary.json").read_text())
    assert "extracted test features" in summary["test_from"]
    model, _ = load_model(tmp_path / "run" / "stage1" / summary["selected_checkpoint"])
    ds = build_dataset(cfg.data)
    logits = predict(model.eval(), ds.test, 64, pipeline.default_device(), 32, channels_last=True)
    fs = load_features(tmp_path / "run" / "features.npz")
    x, y = fs.splits["test"]
    from_features = x @ fs.init_weight.T + fs.init_bias
    np.testing.assert_allclose(from_features, logits, rtol=1e-4, atol=1e-4)  # the same numbers, up to kernel rounding
    assert np.array_equal(y, ds.test.labels)
    assert summary["test"] == accuracy_report(from_features, y, ds.train_counts)


def test_stage2_checkpoint_is_last_or_best():
    from lort.errors import LortError

    assert load_config(None, {}).stage2.checkpoint == "last"
    with pytest.raises(LortError, match="stage2.checkpoint must be one of last, best, got 'middle'"):
        load_config(None, {"stage2.checkpoint": "middle"})


def test_pipeline_refuses_a_folder_holding_a_different_run(tmp_path, capsys):
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.yaml").write_text("data: {}\n")
    code = main(["run", "--out", str(out), "--root", str(tmp_path), "--epochs", "1", "--set", "data.max_per_class=40",
                 "--imbalance-ratio", "10"])  # fmt: skip
    assert code == 2
    assert "already holds a run with a different config" in capsys.readouterr().err


def test_a_run_may_resume_with_its_speed_settings_or_test_trace_changed(tmp_path):
    """compile, workers and stage1.test_trace leave the training as it is, so a run folder (and a
    stage-1 checkpoint) continues with them changed; any other key is named."""
    from lort.config import dump_yaml, resumable_differences

    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(load_config(None, {"stage1.epochs": 3})))
    same = load_config(None, {"stage1.epochs": 3, "stage1.test_trace": True, "stage1.compile": False,
                              "stage1.workers": 0})  # fmt: skip
    assert resumable_differences(path, same) == []
    other = load_config(None, {"stage1.epochs": 3, "stage1.lr": 0.5, "stage1.test_trace": True})
    assert resumable_differences(path, other) == [("stage1.lr", 0.01, 0.5)]


def test_a_run_recorded_before_keys_were_added_is_the_same_run(tmp_path):
    from lort.config import dump_yaml, same_config

    cfg = load_config(None, {"stage1.epochs": 7})
    old = tmp_path / "config.yaml"
    # the config as written before the stage-1 regularisers existed: those keys absent
    text = "".join(ln + "\n" for ln in dump_yaml(cfg).splitlines() if "mixup" not in ln and "cutmix" not in ln)
    old.write_text(text)
    assert text != dump_yaml(cfg) and same_config(old, cfg)
    other = load_config(None, {"stage1.epochs": 7, "stage1.mixup_alpha": 0.2})
    assert not same_config(old, other)
    old.write_text(text.replace("stage1:\n", "stage1:\n  removed_key: 1\n"))
    assert not same_config(old, cfg)


@pytest.mark.parametrize("command", [["data"], ["train"], ["extract"], ["retrain"], ["compare"], ["run"], ["tune"],
                                     ["report"], ["analyze"], ["sweep"], ["methods"], ["data", "info"], ["data", "plot"]])  # fmt: skip
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: lort" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("lort 0.")


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert len(presets) >= 10
    for p in presets:
        load_config(p)


def test_analyze_command_on_a_logits_file(tmp_path, capsys):
    import numpy as np

    z = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
    np.savez(
        tmp_path / "l.npz",
        test_logits=z,
        test_labels=np.array([0, 1, 1]),
        train_counts=np.array([300, 10]),
    )
    assert main(["analyze", "--logits", str(tmp_path / "l.npz"), "--out", str(tmp_path / "a.json")]) == 0
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["acc"] == pytest.approx(2 / 3) and rep["many"] == 1.0 and rep["few"] == 0.5
    assert main(["analyze", "--logits", str(tmp_path / "missing.npz")]) == 2


def test_full_mode_retrain_runs_the_backbone_and_writes_the_model(tmp_path, capsys):
    """The reference protocol (augmented images through the frozen backbone) on a tiny run."""
    import torch

    from lort.runtime.checkpoint import load_model
    from lort.stage1.train import train

    make_cifar_archive(tmp_path, "cifar10", 50, 3)
    train(_cfg(tmp_path, **{"stage1.epochs": 1}), tmp_path / "s1")
    out = tmp_path / "full"
    code = main(["retrain", "--checkpoint", str(tmp_path / "s1" / "best.pt"), "--mode", "full", "--bn-mode", "train",
                 "--smooth", "0.9", "--epochs", "2", "--lr", "0.01", "--out", str(out)])  # fmt: skip
    assert code == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["results"][0]["epoch"] in (1, 2)
    model, _ = load_model(out / "model.pt")
    clf = np.load(out / "classifiers" / "lort.npz")
    assert torch.allclose(model.get_classifier().weight, torch.as_tensor(clf["weight"]))
    before, _ = load_model(tmp_path / "s1" / "best.pt")
    assert not torch.equal(before.get_classifier().weight, model.get_classifier().weight)
    assert main(["compare", "--features", str(tmp_path / "x.npz"), "--mode", "full", "--out", str(tmp_path / "o")]) == 2


def test_report_renders_in_headless_chromium(tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/ensure-chromium installs Debian's package when it can)")
    make_cifar_archive(tmp_path, "cifar10", 50, 3)
    out = tmp_path / "run"
    run_pipeline(_cfg(tmp_path), out, "lort run test")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = (out / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    assert "Leaderboard" in dom.stdout and dom.stdout.count("<img") >= 5 and "<table>" in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    with Image.open(shot) as img:
        arr = np.asarray(img.convert("L"), dtype=float)
    assert arr.shape == (2400, 1200) and arr.std() > 10  # a rendered page, not a blank one


def test_tta_flip_is_off_by_default_and_reported_when_on(tmp_path, capsys):
    from lort.stage1.train import train

    make_cifar_archive(tmp_path, "cifar10", 50, 3)
    train(_cfg(tmp_path, **{"stage1.epochs": 1}), tmp_path / "s1")
    for flag, expect in (([], False), (["--tta-flip"], True)):
        feats = tmp_path / f"f{len(flag)}.npz"
        assert main(["extract", "--checkpoint", str(tmp_path / "s1" / "best.pt"), "--out", str(feats), *flag]) == 0
        out = tmp_path / f"cmp{len(flag)}"
        assert main(["compare", "--features", str(feats), "--methods", "ce", "--epochs", "1", "--out", str(out)]) == 0
        assert json.loads((out / "leaderboard.json").read_text())["tta"] is expect
        assert ("test-time augmentation: ON" in (out / "leaderboard.md").read_text()) is expect
    plain, flipped = np.load(tmp_path / "f0.npz"), np.load(tmp_path / "f1.npz")
    assert np.array_equal(plain["train_features"], flipped["train_features"])  # train features untouched
    assert not np.allclose(plain["test_features"], flipped["test_features"])


@pytest.mark.slow
def test_figures_of_a_short_real_cifar10_lt_run(short_cifar10_lt_run, tmp_path):
    from lort.analysis.report import build_report
    from lort.io import write_json
    from lort.stage2 import Schedule
    from lort.stage2.sweep import sensitivity_grid, smoothing_sweep
    from lort.stage2.workflow import run_compare

    fs = short_cifar10_lt_run["features"]
    out = tmp_path / "cmp"
    run_compare(fs, ["ce", "lort", "crt", "la_posthoc"], out, Schedule(epochs=5), (5e-4, 5e-3), "short run")
    write_json(out / "sweep.json", smoothing_sweep(fs, Schedule(epochs=3), smooth=(0.0, 0.9, 0.98), ratios=(3.0,)))
    write_json(out / "sensitivity.json", sensitivity_grid(fs, lrs=(5e-4, 5e-3), weight_decays=(0.0, 5e-3), epochs=2))
    html, md = build_report(out)
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert names == {"per_class_accuracy.png", "logits_magnitude_rsd.png", "sample_logits.png",
                     "smoothing_sweep.png", "sensitivity.png", "class_counts.png", "forest.png"}  # fmt: skip
    for name in names:
        with Image.open(out / "figures" / name) as img:
            assert img.size[0] >= 400 and img.size[1] >= 250 and np.asarray(img.convert("L")).std() > 5, name
    analysis = json.loads((out / "analysis.json").read_text())
    few = analysis["lort"]["group_means"]["logits_magnitude_normalized"]["few"]
    assert few is not None  # the n_max-1000 profile has Few classes
