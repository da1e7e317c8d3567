"""Reliability: SIGKILL at the worst moments (mid-epoch, between writing a file and
renaming it into place, between the steps of ``lort run``), then resume; every output is
complete or absent; the same seed gives the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lort.cli import main
from lort.config import dump_yaml, load_config
from lort.io import FAILPOINT_ENV
from lort.runtime.checkpoint import read_checkpoint

from .conftest import make_cifar_archive

STAGE1 = {"data.max_per_class": 40, "data.imbalance_ratio": 10, "data.val_per_class": 4, "stage1.epochs": 3,
          "stage1.batch_size": 16, "stage1.eval_batch_size": 64}  # fmt: skip
STAGE2 = {"stage2.epochs": 3, "stage2.lrs": [0.005]}


def assert_outputs_complete(folder: Path) -> None:
    """Every file lort wrote in ``folder`` parses in full (a kill leaves no half file)."""
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".npz":
            with np.load(path) as data:
                for key in data.files:
                    data[key]
        elif path.suffix == ".pt":
            read_checkpoint(path)
        elif path.suffix == ".png":
            assert path.read_bytes()[-8:] == b"IEND\xaeB`\x82", path


def _killed(cmd: list[str], failpoint: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return subprocess.run([sys.executable, "-m", "lort", *cmd], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _weights(path: Path) -> dict:
    return read_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    make_cifar_archive(root, "cifar10", 50, 5)
    return root


def _set_args(root: Path, values: dict) -> list[str]:
    args = ["--set", f"data.root={root}"]
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def test_stage1_killed_while_writing_checkpoints_resumes_to_the_uninterrupted_weights(archive, tmp_path):
    base = ["train", *_set_args(archive, STAGE1)]
    assert _killed([*base, "--out", str(tmp_path / "clean")], None, tmp_path).returncode == 0
    out = tmp_path / "killed"
    # killed before best.pt's first rename, then before last.pt's rename in epoch 2 (of the resumed process)
    for failpoint in ("best.pt:1", "last.pt:1"):
        res = _killed([*base, "--out", str(out), "--resume"], failpoint, tmp_path)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        assert not (out / "summary.json").exists()
        assert list(out.glob(".*.tmp")), "the kill fell between writing and renaming"
        assert_outputs_complete(out)
    assert _killed([*base, "--out", str(out), "--resume"], None, tmp_path).returncode == 0
    assert not list(out.glob(".*.tmp"))  # the resumed run cleared what the killed writers left
    clean, resumed = _weights(tmp_path / "clean" / "last.pt"), _weights(out / "last.pt")
    for key in clean:
        assert torch.equal(clean[key], resumed[key]), key
    epochs = [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert read_checkpoint(out / "best.pt")["epoch"] == read_checkpoint(tmp_path / "clean" / "best.pt")["epoch"]


def _leaderboard_rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())["results"]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_lort_run_killed_at_each_step_completes_with_the_uninterrupted_results(archive, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_yaml(load_config(None, {"data.root": str(archive), **STAGE1, **STAGE2})))
    clean, out = tmp_path / "clean", tmp_path / "killed"
    assert _killed(["run", str(config), "--out", str(clean)], None, tmp_path).returncode == 0
    steps = ["last.pt:2", "features.npz:1", "leaderboard.json:1", "sweep.json:1", "report.html:1"]
    for failpoint in steps:
        res = _killed(["run", str(config), "--out", str(out)], failpoint, tmp_path)
        assert res.returncode == -signal.SIGKILL, (failpoint, res.stderr[-2000:])
        assert not (out / failpoint.split(":")[0]).exists() or failpoint.startswith("last.pt")
        assert_outputs_complete(out)
    res = _killed(["run", str(config), "--out", str(out)], None, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _leaderboard_rows(out / "compare" / "leaderboard.json") == _leaderboard_rows(
        clean / "compare" / "leaderboard.json"
    )
    assert json.loads((out / "sweep.json").read_text()) == json.loads((clean / "sweep.json").read_text())
    assert (out / "report.html").is_file() and not list(out.rglob(".*.tmp"))
    assert len(json.loads((out / "commands.json").read_text())) == len(steps) + 1


def test_every_output_folder_records_seed_and_library_versions(archive, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_yaml(load_config(None, {"data.root": str(archive), **STAGE1, "stage1.epochs": 1, **STAGE2,
                                                   "stage2.sweep": False})))  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    for env_file in (out / "environment.json", out / "stage1" / "environment.json"):
        env = json.loads(env_file.read_text())
        assert env["seed"] == 0 and env["torch"] == torch.__version__ and "numpy" in env, env_file
    board = json.loads((out / "compare" / "leaderboard.json").read_text())
    assert board["environment"]["torch"] == torch.__version__ and board["environment"]["seed"] == 0
    feats = tmp_path / "f.npz"
    assert main(["extract", "--checkpoint", str(out / "stage1" / "best.pt"), "--out", str(feats)]) == 0
    with zipfile.ZipFile(feats) as z:
        assert "meta_json.npy" in z.namelist()
    meta = json.loads(str(np.load(feats)["meta_json"]))
    assert meta["environment"]["torch"] == torch.__version__


def test_same_features_and_seed_give_identical_stage2_results(archive, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_yaml(load_config(None, {"data.root": str(archive), **STAGE1, "stage1.epochs": 1})))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "s1")]) == 0
    assert f"lort extract --checkpoint {tmp_path / 's1' / 'last.pt'}" in capsys.readouterr().out  # as lort run does
    feats = tmp_path / "f.npz"
    assert main(["extract", "--checkpoint", str(tmp_path / "s1" / "last.pt"), "--out", str(feats)]) == 0
    for name in ("a", "b"):
        assert main(["compare", "--features", str(feats), "--epochs", "3", "--out", str(tmp_path / name)]) == 0
    assert _leaderboard_rows(tmp_path / "a" / "leaderboard.json") == _leaderboard_rows(
        tmp_path / "b" / "leaderboard.json"
    )


def test_non_rgb_images_are_converted_not_refused(tmp_path):
    """Grayscale, palette, RGBA and CMYK files are read as RGB (the usual convention)."""
    from PIL import Image

    from lort.data.readers import read_image_folder

    root = tmp_path / "imgs"
    modes = {"gray": "L", "palette": "P", "alpha": "RGBA", "print": "CMYK"}
    for cls, mode in modes.items():
        for split in ("train", "test"):
            d = root / split / cls
            d.mkdir(parents=True)
            fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
            Image.new(mode, (8, 8)).save(d / f"0.{fmt.lower()}", format=fmt)
    raw = read_image_folder(root)
    images = raw.splits["train"].images
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
