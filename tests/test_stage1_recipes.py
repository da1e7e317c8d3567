"""benchmarks/stage1_recipes.py reads finished runs and lays their figures side by side."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "stage1_recipes.py"
CE = ROOT / "results" / "cifar10_lt_ir100_ce_e200"
AA = ROOT / "results" / "cifar10_lt_ir100_autoaugment_e200"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_the_table_holds_each_runs_own_figures_and_what_its_stage_1_changed(tmp_path):
    out = tmp_path / "recipes"
    done = _run("--out", out, f"ce={CE}", f"aa={AA}")
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    for row, run in zip(summary["recipes"], (CE, AA), strict=True):
        s1 = json.loads((run / "stage1" / "summary.json").read_text())
        board = json.loads((run / "compare" / "leaderboard.json").read_text())
        assert row["stage1_test"] == round(100 * s1["test"]["acc"], 2)
        assert row["reference"] == board["statistics"]["reference"]
        lort = next(r for r in board["results"] if r["method"] == "lort")
        assert (row["lort_test"], row["lort_ci"]) == (lort["test_acc"], lort["diff_ci"])
        assert row["best_test"] == max(r["test_acc"] for r in board["results"])
    assert summary["recipes"][0]["differs"] == {}
    assert [r["stage2_from"] for r in summary["recipes"]] == ["best.pt", "best.pt"]  # made before it was recorded
    later = tmp_path / "later"
    shutil.copytree(AA, later, ignore=shutil.ignore_patterns("*.npz", "*.png", "*.pt"))
    (later / "features.json").write_text(json.dumps({"checkpoint": "last.pt"}))
    assert _run("--out", tmp_path / "again", f"ce={CE}", f"later={later}").returncode == 0
    assert [r["stage2_from"] for r in json.loads((tmp_path / "again.json").read_text())["recipes"]] == [
        "best.pt",
        "last.pt",
    ]
    assert summary["recipes"][1]["differs"] == {"augment": "autoaugment", "cutout": 16}
    assert set(summary["per_method"]) >= {"ce", "lort", "crt", "lws", "tau_norm"}
    change = summary["per_method"]["ce"]["aa"]["test"] - summary["per_method"]["ce"]["ce"]["test"]
    assert "| ce | " in out.with_suffix(".md").read_text() and f"{change:+.2f}" in out.with_suffix(".md").read_text()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    bad = _run("--out", tmp_path / "x", "no-equals-sign")
    assert bad.returncode == 2 and "LABEL=RUN" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    missing = _run("--out", tmp_path / "x", f"a={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    other = tmp_path / "other"
    shutil.copytree(AA, other, ignore=shutil.ignore_patterns("*.npz", "*.png", "*.pt"))
    cfg = (other / "config.yaml").read_text().replace("imbalance_ratio: 100.0", "imbalance_ratio: 50.0")
    (other / "config.yaml").write_text(cfg)
    differs = _run("--out", tmp_path / "x", f"a={CE}", f"b={other}")
    assert differs.returncode == 2 and "data section differs" in differs.stderr
    assert not (tmp_path / "x.md").exists() and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("name", ["stage1_recipes/cifar10_lt_ir100.md"])
def test_the_committed_table_is_what_the_script_writes_today(tmp_path, name):
    committed = (ROOT / "results" / name).read_text()
    command = committed.split("Made by `", 1)[1].split("`", 1)[0]
    args = command.split(" --out ", 1)[1].split(" ", 1)[1]

    done = _run("--out", tmp_path / "t", *shlex.split(args))
    assert done.returncode == 0, done.stderr
    fresh = (tmp_path / "t.md").read_text().replace("](t.png)", f"]({Path(name).stem}.png)")  # the figure beside
    assert fresh.split("\n", 3)[3] == committed.split("\n", 3)[3]  # all but the command line (its --out)
    assert (tmp_path / "t.png").stat().st_size > 10_000


def _finished_run(folder: Path, root: Path, **extra) -> Path:
    from lort.config import dump_yaml, load_config
    from lort.stage1.train import train

    over = {"data.root": str(root), "data.max_per_class": 40, "data.imbalance_ratio": 10, "data.val_per_class": 4,
            "stage1.epochs": 4, "stage1.warmup_epochs": 2, "stage1.batch_size": 16, "stage1.eval_batch_size": 64}  # fmt: skip
    cfg = load_config(None, over | extra)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    train(cfg, folder / "stage1", evaluate_test=True)
    return folder


def test_proxies_are_cut_as_lort_tune_cuts_them_and_scored_as_its_trials(tmp_path):
    from .conftest import make_cifar_archive

    make_cifar_archive(tmp_path, "cifar10", 50, 5)
    plain = _finished_run(tmp_path / "plain", tmp_path)
    mixup = _finished_run(tmp_path / "mixup", tmp_path, **{"stage1.mixup_alpha": 1.0})
    script = ROOT / "benchmarks" / "proxy_fidelity.py"
    out = tmp_path / "fidelity"
    args = [sys.executable, str(script), "--proxy-epochs", "2", "--out", str(out), f"plain={plain}", f"mixup={mixup}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["plain", "mixup"]
    for row, run in zip(rows, (plain, mixup), strict=True):
        proxy = out / row["label"]
        curve = [json.loads(x) for x in (proxy / "metrics.jsonl").read_text().splitlines()]
        assert len(curve) == 2 and row["proxy_schedule"] == {"epochs": 2, "warmup_epochs": 1}  # 2 * 2/4 warm-up
        assert row["proxy_val"] == round(100 * max(r["val_balanced_acc"] for r in curve), 2)
        assert "ahead_of_leader_from" in row and len(row["full_curve"]) == 4
        assert row["full_test"] == round(
            100 * json.loads((run / "stage1" / "summary.json").read_text())["test"]["acc"], 2
        )
    assert "mixup_alpha: 1.0" in (out / "mixup" / "config.yaml").read_text()
    stamp = (out / "plain" / "summary.json").stat().st_mtime_ns
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert (
        again.returncode == 0 and (out / "plain" / "summary.json").stat().st_mtime_ns == stamp
    )  # resumed, not retrained
    bad = subprocess.run([*args[:-2], f"x={tmp_path / 'nowhere'}"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr


def test_ahead_from_is_the_epoch_from_which_a_curve_stays_above_another():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import proxy_fidelity as pf
    finally:
        sys.path.pop(0)
    assert pf.best_so_far([{"val_balanced_acc": v} for v in (0.2, 0.1, 0.3)]) == [0.2, 0.2, 0.3]
    assert pf.ahead_from([0.1, 0.3, 0.2, 0.5, 0.6], [0.2, 0.2, 0.4, 0.4, 0.4]) == 4  # ahead at 2, behind at 3
    assert pf.ahead_from([0.3, 0.3], [0.1, 0.2]) == 1
    assert pf.ahead_from([0.3, 0.3], [0.1, 0.3]) is None  # level at the end is not ahead


SEEDS30 = (
    ROOT / "results" / "cifar10_lt_ir100_e30",
    ROOT / "results" / "cifar10_lt_ir100_e30_stage1_seeds" / "seed1",
    ROOT / "results" / "cifar10_lt_ir100_e30_stage1_seeds" / "seed2",
)
SEED0_COMPARE = ROOT / "results" / "suite" / "cifar10_lt_ir100_e30" / "compare"


def test_stage1_seed_replicates_give_each_change_its_noise_scale(tmp_path):
    import statistics

    out = tmp_path / "recipes"
    seeds = [f"{SEEDS30[0]},{SEED0_COMPARE}", str(SEEDS30[1]), str(SEEDS30[2])]
    args = [a for s in seeds for a in ("--stage1-seed", s)]
    done = _run("--out", out, *args, f"ce={CE}", f"aa={AA}")
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    spread = summary["stage1_seed_spread"]
    assert spread["seeds"] == [0, 1, 2] and spread["epochs"] == 30
    boards = [json.loads((Path(c) / "leaderboard.json").read_text()) for c in spread["compares"]]
    for method in ("ce", "lort", "ldam_drw"):
        values = [next(r for r in b["results"] if r["method"] == method)["test_acc"] for b in boards]
        assert spread["per_method"][method]["values"] == values
        assert spread["per_method"][method]["sd"] == round(statistics.stdev(values), 2)
    stage1 = [json.loads((s / "stage1" / "summary.json").read_text())["test"]["acc"] for s in SEEDS30]
    assert spread["stage1_test"]["values"] == [round(100 * a, 2) for a in stage1]
    lead = spread["lort_minus_ce"]["values"]
    assert lead == [round(a - b, 2) for a, b in zip(spread["per_method"]["lort"]["values"], spread["per_method"]["ce"]["values"], strict=True)]  # fmt: skip
    change = summary["per_method"]["ldam_drw"]["aa"]["test"] - summary["per_method"]["ldam_drw"]["ce"]["test"]
    ratio = change / (2**0.5 * spread["per_method"]["ldam_drw"]["sd"])
    md = out.with_suffix(".md").read_text()
    assert f"| {change:+.2f} | {spread['per_method']['ldam_drw']['sd']:.2f} | {ratio:.1f} |" in md
    assert "Stage-1 seed noise" in md and "scale, not a test" in md


def test_stage1_seed_replicates_must_differ_in_the_seed_alone(tmp_path):
    one = _run("--out", tmp_path / "x", "--stage1-seed", str(SEEDS30[1]), f"ce={CE}")
    assert one.returncode == 2 and "two or more" in one.stderr and len(one.stderr.strip().splitlines()) == 1
    other = _run("--out", tmp_path / "x", "--stage1-seed", str(CE), "--stage1-seed", str(AA), f"ce={CE}")
    assert other.returncode == 2 and "stage1.augment" in other.stderr and "not in stage1.seed alone" in other.stderr
    same = _run("--out", tmp_path / "x", "--stage1-seed", str(SEEDS30[1]), "--stage1-seed", str(SEEDS30[1]), f"ce={CE}")
    assert same.returncode == 2 and "distinct seeds" in same.stderr
    assert not (tmp_path / "x.md").exists()


RULE = ROOT / "benchmarks" / "stage1_checkpoint_rule.py"


def test_the_development_split_takes_only_unseen_images_and_names_short_classes():
    sys.path.insert(0, str(RULE.parent))
    try:
        from stage1_checkpoint_rule import dev_indices
    finally:
        sys.path.remove(str(RULE.parent))
    labels = np.repeat(np.arange(3), [10, 6, 8])
    used = np.array([0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 16])  # class 0 keeps 2 unseen, 1 keeps 4, 2 keeps 7
    unseen = np.setdiff1d(np.arange(len(labels)), used)
    idx, left_out = dev_indices(labels, unseen, 4, seed=0)
    assert left_out == [0] and not np.isin(idx, used).any()
    assert np.bincount(labels[idx], minlength=3).tolist() == [0, 4, 4]
    assert np.array_equal(idx, dev_indices(labels, unseen, 4, seed=0)[0])  # seeded


def test_the_checkpoint_rule_study_compares_both_checkpoints_on_unseen_images(tmp_path):
    from lort.config import load_config
    from lort.stage1.train import train

    from .conftest import make_cifar_archive

    make_cifar_archive(tmp_path, "cifar10", 24, 3)  # the head class trains on 20 and validates on 4: none unseen
    cfg = load_config(None, {
        "data.root": str(tmp_path), "data.max_per_class": 20, "data.imbalance_ratio": 10, "data.val_per_class": 4,
        "stage1.epochs": 2, "stage1.batch_size": 16, "stage1.eval_batch_size": 64,
    })  # fmt: skip
    train(cfg, tmp_path / "run" / "stage1")
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, str(RULE), "--out", str(out), "--root", str(tmp_path), "--dev-per-class", "5",
                           "--methods", "ce,lort", "--seeds", "1", str(tmp_path / "run")],
                          cwd=RULE.parent, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["dev_images"] == 5 * 9 and len(row["dev_classes_left_out"]) == 1
    for name, epoch in (("best", row["best_epoch"]), ("last", 2)):
        got = row["checkpoints"][name]
        board = json.loads((out / "run" / f"compare_{name}" / "leaderboard.json").read_text())
        assert got["epoch"] == epoch and set(got["methods"]) == {"ce", "lort"}
        assert got["pick"] == board["statistics"]["reference"]
        assert got["methods"]["ce"]["dev"] == next(r["test_acc"] for r in board["results"] if r["method"] == "ce")
    assert "| run | best epoch |" in (out / "summary.md").read_text()
    missing = subprocess.run([sys.executable, str(RULE), "--out", str(tmp_path / "x"), str(tmp_path / "nowhere")],
                             cwd=RULE.parent, capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "nowhere" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
