"""``lort run CONFIG``: data -> stage 1 -> feature cache -> stage-2 comparison -> sweeps ->
report, in one folder. Each step is skipped when its output exists and is valid, so a
re-run after a crash or kill picks up where it stopped (stage 1 resumes mid-run)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from .analysis.metrics import accuracy_report
from .analysis.report import build_report
from .config import RunConfig, dump_yaml, resumable_differences
from .data import build_dataset
from .data.features import load_features
from .env_info import environment
from .errors import LortError
from .io import remove_stale_temporaries, sha256_file, write_json, write_text
from .layout import PipelineRun
from .runtime.precision import choose_precision
from .stage1.train import train
from .stage2.compare import check_fixed
from .stage2.methods import resolve_methods
from .stage2.sweep import sensitivity_grid, smoothing_sweep
from .stage2.workflow import default_device, features_from_checkpoint, run_compare


def _log(msg: str) -> None:
    print(f"[lort run] {msg}", file=sys.stderr, flush=True)


def _valid_json(path: Path, **expected) -> dict | None:
    """The JSON at ``path`` if it exists, parses and records ``expected`` values."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if all(data.get(k) == v for k, v in expected.items()) else None


def _test_from_features(cfg: RunConfig) -> bool:
    """Whether stage 1's test report can come from the extracted test features: they are the
    same fp32 forward pass when extraction runs without autocast and without flip averaging,
    so the test split is passed through the backbone once instead of twice."""
    return not cfg.stage2.tta_flip and choose_precision("auto", default_device()).dtype is None


def _stage1_test(run: PipelineRun, summary: dict, fs, ds) -> dict:
    """Fill stage 1's test report from the test features and the stage-1 classifier."""
    x, y = fs.splits["test"]
    logits = np.asarray(x, dtype=np.float32) @ fs.init_weight.T + fs.init_bias
    summary = summary | {
        "test": accuracy_report(logits, y, ds.train_counts),
        "test_from": "the extracted test features (fp32, no flip averaging) and the stage-1 classifier",
    }
    write_json(run.stage1.summary, summary)
    return summary


def run_pipeline(cfg: RunConfig, out: str | Path, command: str | None = None) -> dict:
    s2 = cfg.stage2
    check_fixed(s2.params, resolve_methods(s2.methods))  # method names and hyperparameters fail before any work
    out = Path(out)
    run = PipelineRun(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # what killed writers left behind
    config_text = dump_yaml(cfg)
    differ = resumable_differences(run.config, cfg) if run.config.is_file() else []
    for key, was, now in differ[:1]:
        raise LortError(
            f"{out} already holds a run with a different config ({key} was {was!r}, now {now!r}); choose another --out"
        )
    write_text(run.config, config_text)
    commands = json.loads((run.commands).read_text()) if (run.commands).is_file() else []
    write_json(run.commands, commands + [command or " ".join(sys.argv)])
    write_json(run.environment, environment(cfg.stage1.seed))

    _log("1/6 data")
    ds = build_dataset(cfg.data)
    _log(f"   {ds.describe()}")
    write_json(run.dataset, ds.summary() | {"classes": ds.classes})

    _log("2/6 stage 1 (resumes if interrupted)")
    # stage 1 reports its best validation epoch (its last without validation); stage 2 starts from
    # stage2.checkpoint (the last epoch by default), so stage 1's test figure comes from the
    # features when the two are the same checkpoint
    same_checkpoint = cfg.stage2.checkpoint == "best" or ds.val is None
    s1 = train(
        cfg,
        run.stage1.root,
        resume=True,
        dataset=ds,
        evaluate_test=not (_test_from_features(cfg) and same_checkpoint),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    ckpt = run.stage1.last if cfg.stage2.checkpoint == "last" else run.stage1 / s1["selected_checkpoint"]
    if not ckpt.is_file():  # a folder that kept only best.pt (as committed result folders do)
        raise LortError(
            f"{ckpt}: missing, and stage 2 starts from it (stage2.checkpoint = {cfg.stage2.checkpoint}); "
            f"to run stage 2 from {run.stage1.best.name} instead: lort compare --checkpoint {run.stage1.best} --out DIR"
        )
    ckpt_sha = sha256_file(ckpt)

    _log(f"3/6 feature cache (stage 2 starts from stage1/{ckpt.name}: stage2.checkpoint = {cfg.stage2.checkpoint})")
    feats = run.features
    meta = _valid_json(
        run.features_meta,
        checkpoint_sha256=ckpt_sha,
        views=cfg.stage2.views,
        tta_flip=cfg.stage2.tta_flip,
    )
    if meta is None or not feats.is_file() or sha256_file(feats) != meta.get("sha256"):
        fs = features_from_checkpoint(
            ckpt, cfg.data.root, cfg.stage2.views, True, cfg.stage2.tta_flip, workers=cfg.stage1.workers
        ).features
        fs.save(feats)
        write_json(
            run.features_meta,
            {
                "checkpoint": ckpt.name,
                "checkpoint_sha256": ckpt_sha,
                "views": cfg.stage2.views,
                "tta_flip": cfg.stage2.tta_flip,
                "sha256": sha256_file(feats),
            },
        )
    else:
        _log("   features.npz is valid, reused")
    fs = load_features(feats)
    feats_sha = sha256_file(feats)
    if s1.get("test") is None:
        s1 = _stage1_test(run, s1, fs, ds)

    schedule = s2.schedule()
    _log("4/6 stage-2 comparison")
    board = _valid_json(run.compare.leaderboard_json, features_sha256=feats_sha)
    if board is None:
        run_compare(
            fs,
            s2.methods,
            run.compare.root,
            schedule,
            tuple(s2.lrs),
            str(feats),
            progress=lambda m: _log(f"   {m}"),
            fixed=s2.params,
            fits_per_method=s2.budget,
            seeds=s2.seeds,
        )
        board = json.loads((run.compare.leaderboard_json).read_text())
        write_json(run.compare.leaderboard_json, board | {"features_sha256": feats_sha})
    else:
        _log("   leaderboard is valid, reused")

    if s2.sweep:
        _log("5/6 smoothing sweep and lr x weight-decay sensitivity")
        if _valid_json(run.sweep_meta, features_sha256=feats_sha) is None:
            write_json(run.sweep, smoothing_sweep(fs, schedule))
            write_json(run.sensitivity, sensitivity_grid(fs))
            write_json(run.sweep_meta, {"features_sha256": feats_sha})
    _log("6/6 report")
    html, md = build_report(out)
    return {
        "stage1": s1,
        "leaderboard": run.compare.leaderboard_md,
        "report": html,
        "summary": md,
    }
