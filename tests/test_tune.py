"""lort tune: the Optuna study over stage-1 hyperparameters, on tiny generated CIFAR archives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from lort.cli import main  # noqa: E402
from lort.config import load_config  # noqa: E402
from lort.errors import LortError  # noqa: E402
from lort.io import FAILPOINT_ENV  # noqa: E402
from lort.stage1 import tune as tune_mod  # noqa: E402
from lort.stage1.train import train  # noqa: E402
from lort.stage1.tune import load_space, parse_space, proxy_config, score_resolution, tune  # noqa: E402

from .conftest import make_cifar_archive  # noqa: E402

SMALL = {
    "data.max_per_class": 40,
    "data.imbalance_ratio": 10,
    "data.val_per_class": 4,
    "stage1.epochs": 4,
    "stage1.warmup_epochs": 2,
    "stage1.batch_size": 16,
    "stage1.eval_batch_size": 64,
    "stage1.compile": False,
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_data")
    make_cifar_archive(root, "cifar10", 50, 2)
    return root


def _cfg(root, **extra):
    return load_config(None, {"data.root": str(root), **SMALL, **extra})


def _cli_args(root, out, *more):
    args = ["tune", "--out", str(out)]
    for key, value in {"data.root": str(root), **SMALL}.items():
        args += ["--set", f"{key}={value}"]
    return args + list(more)


def test_a_study_is_stored_scored_on_validation_and_its_winner_runs_as_written(archive, tmp_path):
    out = tmp_path / "tune"
    summary = tune(_cfg(archive), out, trials=3, epochs=2, sampler="random", pruner="none", log=lambda m: None)
    study = optuna.load_study(study_name="lort-tune", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    # each trial's score is its best validation balanced accuracy over the proxy's epochs
    for t in done:
        folder = out / t.user_attrs["folder"]
        records = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2]
        assert t.value == pytest.approx(max(r["val_balanced_acc"] for r in records))
        trial_summary = json.loads((folder / "summary.json").read_text())
        assert trial_summary["test"] is None  # the test split is never read by a trial
        assert not list(folder.glob("*.pt"))  # checkpoints removed after the trial
        trial_cfg = load_config(folder / "config.yaml")
        assert trial_cfg.stage1.epochs == 2 and trial_cfg.stage1.warmup_epochs == 1  # warm-up scaled
    best = max(done, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number
    chosen = load_config(out / "best.yaml")  # lort run takes it as it is
    assert chosen.stage1.epochs == 4 and chosen.stage1.warmup_epochs == 2  # the full schedule
    assert chosen.stage1.lr == pytest.approx(best.params["stage1.lr"])
    assert chosen.stage1.weight_decay == pytest.approx(best.params["stage1.weight_decay"])
    rows = json.loads((out / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert (out / "trials.csv").read_text().count("\n") == 4
    assert (out / "figures" / "tune_history.png").stat().st_size > 1000
    assert "| trial | state |" in (out / "report.md").read_text()
    assert "- Study 'lort-tune' in study.db (SQLite) in this folder: 3 complete" in (out / "report.md").read_text()
    assert summary["data"].startswith("cifar10, ") and f"- Data: {summary['data']}." in (out / "report.md").read_text()
    # the report says how finely this validation split tells trials apart, and which it does not
    res = summary["best"]["resolution"]
    val_counts = json.loads((out / done[0].user_attrs["folder"] / "dataset.json").read_text())["val_counts"]
    assert res["images"] == sum(val_counts) and res["min_per_class"] == min(val_counts)
    close = [t.number for t in done if t.number != best.number and best.value - t.value < res["separation"]]
    assert summary["best"]["not_separated_from"] == close
    assert "not told apart" in (out / "report.md").read_text()
    assert main(["report", str(out)]) == 0
    # a study written before the resolution was recorded gets it from its best trial's dataset.json
    stored = json.loads((out / "tune.json").read_text())
    del stored["best"]["resolution"], stored["best"]["not_separated_from"]
    (out / "tune.json").write_text(json.dumps(stored))
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and "not told apart" in (out / "report.md").read_text()

    # resuming with a larger budget runs only the missing trials; the same budget runs none
    tune(_cfg(archive), out, trials=4, epochs=2, sampler="random", pruner="none", log=lambda m: None)
    assert len(optuna.load_study(study_name="lort-tune", storage=f"sqlite:///{out / 'study.db'}").trials) == 4
    tune(_cfg(archive), out, trials=4, epochs=2, sampler="random", pruner="none", log=lambda m: None)
    assert len(json.loads((out / "trials.json").read_text())) == 4
    # another proxy (or config, or space) in the same study is refused: it would mix two searches
    with pytest.raises(LortError, match="another config, space or proxy"):
        tune(_cfg(archive), out, trials=5, epochs=3, sampler="random", pruner="none", log=lambda m: None)


def test_the_pruner_stops_trials_from_their_per_epoch_curve(archive, tmp_path, monkeypatch):
    # a pruner that prunes everything: each trial stops after its first reported epoch
    monkeypatch.setattr(tune_mod, "make_pruner", lambda name, epochs: optuna.pruners.ThresholdPruner(lower=2.0))
    lines = []
    summary = tune(_cfg(archive), tmp_path / "t", trials=2, epochs=3, sampler="random", log=lines.append)
    rows = json.loads((tmp_path / "t" / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["pruned", "pruned"]
    assert [r["epochs_trained"] for r in rows] == [1, 1]
    for r in rows:
        metrics = (tmp_path / "t" / r["folder"] / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 1
    assert summary["best"] is None and not (tmp_path / "t" / "best.yaml").exists()
    assert sum("pruned after epoch 1" in ln for ln in lines) == 2  # a progress line per trial


def test_on_epoch_exception_stops_stage1_training_after_that_epoch(archive, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_two(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(_cfg(archive), tmp_path / "s", on_epoch=stop_at_two)
    assert len((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "s" / "summary.json").exists()


def test_a_killed_search_resumes_and_keeps_its_finished_trials(archive, tmp_path, monkeypatch):
    out = tmp_path / "tune"
    args = _cli_args(archive, out, "--trials", "2", "--proxy-epochs", "2", "--sampler", "random", "--pruner", "none")
    first = tune(_cfg(archive), out, trials=1, epochs=2, sampler="random", pruner="none", log=lambda m: None)
    kept = (out / "trials" / "0000" / "metrics.jsonl").read_text()
    env = dict(os.environ, **{FAILPOINT_ENV: "stage1-step:3"})  # killed in the middle of trial 1
    res = subprocess.run([sys.executable, "-m", "lort", *args], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    # resumed at once: trial 1's heartbeat is still fresh, so it is left running, and trial 2 runs
    assert main(args) == 0
    rows = json.loads((out / "trials.json").read_text())
    assert {r["number"]: r["state"] for r in rows} == {0: "complete", 1: "running", 2: "complete"}
    assert (out / "trials" / "0000" / "metrics.jsonl").read_text() == kept  # not trained again
    assert first["best"]["trial"] == 0
    # once its heartbeat is older than the grace period, the dead trial is failed and queued
    # again with its own hyperparameters, and the next resume runs it
    monkeypatch.setattr(tune_mod, "GRACE_S", 1)
    monkeypatch.setattr(tune_mod, "HEARTBEAT_S", 1)
    time.sleep(2)
    assert main(_cli_args(archive, out, "--trials", "3", "--proxy-epochs", "2", "--sampler", "random",
                          "--pruner", "none")) == 0  # fmt: skip
    rows = {r["number"]: r for r in json.loads((out / "trials.json").read_text())}
    assert rows[1]["state"] == "fail" and rows[3]["state"] == "complete"
    assert rows[3]["params"] == rows[1]["params"]


@pytest.mark.parametrize(
    "space, message",
    [
        ("stage1.lr: {low: 0.4, high: 0.1}\n", "low < high"),
        ("data.seed: {low: 1, high: 2}\n", "stage1.* keys only"),
        ("stage1.momentm: {low: 0.5, high: 0.9}\n", "not a stage1 key"),
        ("stage1.epochs: {low: 10, high: 20}\n", "not searchable"),
        ("stage1.weight_decay: {low: 0, high: 0.1, log: true}\n", "log range needs low > 0"),
        ("stage1.augment: {choices: []}\n", "non-empty list"),
        ("stage1.lr: 0.1\n", "give {low: A, high: B}"),
        ("stage1.lr: {low: 0.1, high: [\n", "not valid YAML"),
        ("stage1.augment: {choices: [standard, rand]}\n", "is not a valid config"),
    ],
)
def test_a_bad_search_space_is_one_line_and_exit_2(archive, tmp_path, capsys, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out = tmp_path / "never"
    assert main(_cli_args(archive, out, "--space", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if "valid config" not in message:
        assert str(path) in err
    assert not (out / "trials").exists()


def test_space_file_forms():
    dims = parse_space(
        {
            "lr": {"low": 0.01, "high": 0.4, "log": True},
            "stage1.batch_size": {"low": 64, "high": 256, "int": True, "step": 64},
            "stage1.mixup_alpha": {"choices": [0.0, 0.2, 1.0]},
        },
        "space",
    )
    assert [d.key for d in dims] == ["stage1.lr", "stage1.batch_size", "stage1.mixup_alpha"]
    assert dims[1].integer and dims[2].choices == (0.0, 0.2, 1.0)
    assert [d.key for d in load_space(None)] == ["stage1.lr", "stage1.weight_decay"]


def test_proxy_schedule_scales_the_warmup():
    cfg = load_config(None, {"stage1.epochs": 200, "stage1.warmup_epochs": 5})
    assert proxy_config(cfg, 40).stage1.warmup_epochs == 1
    assert proxy_config(cfg, 100).stage1.warmup_epochs == 2  # round(2.5) is 2
    assert proxy_config(load_config(None, {"stage1.epochs": 8}), 2).stage1.warmup_epochs == 0


def test_proxy_schedule_scales_the_milestones_of_a_step_schedule():
    cfg = load_config(
        None, {"stage1.lr_schedule": "step", "stage1.lr_milestones": "160,180", "stage1.warmup_epochs": 5}
    )
    proxy = proxy_config(cfg, 20).stage1
    assert (proxy.epochs, proxy.lr_schedule, proxy.lr_milestones, proxy.warmup_epochs) == (20, "step", [16, 18], 1)
    assert proxy_config(cfg, 4).stage1.lr_milestones == [3]  # 3.2 and 3.6 round to one milestone
    flat = proxy_config(cfg, 1).stage1  # no milestone fits inside one epoch: the proxy runs cosine
    assert (flat.lr_schedule, flat.lr_milestones) == ("cosine", [])


def test_tune_without_a_validation_split_is_refused(archive, tmp_path):
    with pytest.raises(LortError, match="validation split"):
        tune(_cfg(archive, **{"data.val_per_class": 0}), tmp_path / "t", trials=1, epochs=1, log=lambda m: None)


def test_two_processes_share_one_study_through_a_storage_url(archive, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lort",
                *_cli_args(
                    archive,
                    tmp_path / f"worker{i}",
                    "--trials",
                    "3",
                    "--proxy-epochs",
                    "1",
                    "--pruner",
                    "none",
                    "--storage",
                    url,
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="lort-tune", storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the study stops at 3 finished trials; a trial already running when the third ends finishes too
    assert 3 <= len(done) <= 4
    points = {(t.params["stage1.lr"], t.params["stage1.weight_decay"]) for t in done}
    assert len(points) == len(done)  # the workers did not propose each other's points
    folders = [p for i in range(2) for p in (tmp_path / f"worker{i}" / "trials").glob("*")]
    assert sorted(int(f.name) for f in folders) == sorted(t.number for t in study.trials)


def test_workers_of_one_study_get_distinct_sampler_seeds():
    from lort.stage1.tune import sampler_seed

    # a sum would give pid 100 with 3 trials done and pid 101 with 2 the same seed
    assert sampler_seed(0, 3, 100) != sampler_seed(0, 2, 101)
    assert len({sampler_seed(0, n, pid) for n in range(20) for pid in range(1000, 1020)}) == 400
    assert sampler_seed(0, 5) == sampler_seed(0, 5)  # one process resuming: reproducible
    assert sampler_seed(0, 5) != sampler_seed(0, 6) != sampler_seed(1, 6)


def test_score_resolution_is_the_binomial_scale_of_a_balanced_accuracy():
    # 20 images a class, 10 classes, a score of 0.5: SE = sqrt(0.25 * 10 / 20) / 10 = 0.0354,
    # the scale on which the study in results/cifar10_lt_ir100_tune could not rank its best trials
    res = score_resolution(0.5, [20] * 10)
    assert res["images"] == 200 and res["one_image"] == pytest.approx(0.005)
    assert res["standard_error"] == pytest.approx((0.25 * 10 / 20) ** 0.5 / 10)
    assert res["separation"] == pytest.approx(2 * 2**0.5 * res["standard_error"])
    # more validation images, a finer scale; a certain score has none; empty classes are left out
    assert score_resolution(0.5, [100] * 10)["standard_error"] < res["standard_error"] / 2
    assert score_resolution(1.0, [20] * 10)["standard_error"] == 0.0
    assert score_resolution(0.5, [20] * 10 + [0])["classes"] == 10


def test_a_study_of_one_trial_says_its_best_was_compared_with_none(archive, tmp_path):
    out = tmp_path / "tune"
    tune(_cfg(archive), out, trials=1, epochs=1, sampler="random", pruner="none", log=lambda m: None)
    text = (out / "report.md").read_text()
    assert "No other trial completed" in text and "Every other completed trial" not in text


def test_a_space_of_regularisers_on_a_short_proxy_carries_the_caveat_and_lr_alone_does_not(archive, tmp_path):
    from lort.stage1.tune import parse_space, proxy_caveat

    space = parse_space(
        {"stage1.lr": {"low": 0.01, "high": 0.1, "log": True}, "stage1.cutout": {"choices": [0, 8]}}, "t"
    )
    messages = []
    summary = tune(_cfg(archive), tmp_path / "t", trials=1, epochs=1, space=space, pruner="none", log=messages.append)
    assert "stage1.cutout" in summary["caveat"] and "stage1.lr" not in summary["caveat"]
    assert any(m.startswith("lort tune: warning:") and "stage1.cutout" in m for m in messages)
    assert "**Caveat**" in (tmp_path / "t" / "report.md").read_text()
    assert proxy_caveat(["stage1.lr", "stage1.weight_decay"], 1, 4, "hyperband") is None  # the default space
    assert proxy_caveat(["stage1.mixup_alpha"], 4, 4, "none") is None  # the full schedule, nothing pruned
    early = proxy_caveat(["stage1.mixup_alpha"], 4, 4, "hyperband")  # full length, but pruned early
    assert "hyperband pruner" in early and "proxy of" not in early


def test_the_study_figure_spans_each_searched_range_and_takes_any_kind_of_key(tmp_path, monkeypatch):
    """Numeric keys are plotted over their searched range (log where the space is log), so a
    winner at an edge shows; a categorical key is left to the table."""
    import matplotlib.pyplot as plt

    from lort.analysis import plots

    kept = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: kept.setdefault("fig", fig) and path)
    rows = [
        {"number": 0, "state": "complete", "val_balanced_acc": 0.4, "params": {"stage1.lr": 0.02, "stage1.augment": "standard", "stage1.batch_size": 64}},
        {"number": 1, "state": "pruned", "last_reported": 0.2, "val_balanced_acc": None, "params": {"stage1.lr": 0.3, "stage1.augment": "autoaugment", "stage1.batch_size": 128}},
    ]  # fmt: skip
    space = {
        "stage1.lr": {"low": 0.01, "high": 0.4, "log": True},
        "stage1.augment": {"choices": ["standard", "autoaugment"]},
        "stage1.batch_size": {"low": 64, "high": 256, "step": 64, "int": True},
    }
    plots.plot_tune_history(rows, space, tmp_path / "h.png")
    fig = kept["fig"]
    history, lr, batch = fig.axes
    assert [ax.get_xlabel() for ax in (lr, batch)] == ["stage1.lr", "stage1.batch_size"]
    assert lr.get_xscale() == "log" and lr.get_xlim()[0] < 0.01 and lr.get_xlim()[1] > 0.4
    assert batch.get_xscale() == "linear" and batch.get_xlim()[0] < 64 < 256 < batch.get_xlim()[1]
    plt.close(fig)


def test_the_shipped_search_spaces_load_and_every_end_is_a_valid_config():
    """configs/tune/*.yaml: each loads, each end of each range makes a valid config, and on a
    short proxy the regularisers' space carries the caveat naming them."""
    from pathlib import Path

    from lort.stage1.tune import proxy_caveat, with_values

    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "tune").glob("*.yaml"))
    assert files
    cfg = load_config(None, {})
    for path in files:
        dims = load_space(path)
        for d in dims:
            for value in d.endpoints():
                with_values(cfg, {d.key: int(value) if d.integer else value})
    dims = load_space(files[[p.name for p in files].index("regularisers.yaml")])
    caveat = proxy_caveat([d.key for d in dims], 50, 200, "hyperband")
    assert all(k in caveat for k in ("stage1.augment", "stage1.mixup_alpha", "stage1.cutout"))
