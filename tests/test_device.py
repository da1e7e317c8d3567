"""Device-agnostic tensor code, checked without a GPU.

Two honest stand-ins for "a second device":

* inputs on ``meta`` (tensors without data, which refuse to mix with CPU tensors exactly
  as CUDA tensors do): every loss, head and method piece must compute on them;
* inputs on the CPU with the *default* device set to ``meta``: any tensor that lort creates
  without naming the device of its inputs lands on ``meta`` and the first operation that
  mixes it with the inputs raises. A whole stage-2 comparison runs this way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lort.data.features import FeatureSet
from lort.stage2 import LogitsRetargetingLoss
from lort.stage2 import losses as L
from lort.stage2.compare import compare
from lort.stage2.heads import CosineHead, LinearHead, LWSHead
from lort.stage2.methods import METHODS, FitContext
from lort.stage2.trainer import Schedule
from lort.testing import oracles as O

META = torch.device("meta")
K, D, N = 5, 8, 40


def _ctx(device: torch.device) -> FitContext:
    counts = np.array([20, 10, 5, 3, 2])
    y = torch.as_tensor(np.repeat(np.arange(K), counts), device=device)
    return FitContext(
        x=torch.randn(N, D).to(device),
        y=y,
        counts=counts,
        init_weight=torch.randn(K, D).to(device),
        init_bias=torch.zeros(K).to(device),
        epochs=4,
    )


def test_mixing_devices_is_caught_by_meta():
    """The premise: a CPU tensor that is not 0-d does not mix with a meta tensor."""
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3, device=META) * torch.tensor([2.0])


def test_losses_compute_on_the_inputs_device():
    logits = torch.randn(6, K).to(META)
    labels = torch.tensor([0, 1, 2, 3, 4, 0]).to(META)
    assert LogitsRetargetingLoss(0.98)(logits, labels).device == META
    assert LogitsRetargetingLoss(target_ratio=3.0)(logits, labels).device == META
    assert L.lort_target(labels, K, 0.9).device == META
    grouped = torch.randn(3, 6, K).to(META)
    assert L.grouped_lort_target(labels, K, torch.tensor([0.5, 0.9, 0.98])).device == META
    assert O.grouped_cross_entropy(grouped, labels).device == META
    assert O.grouped_focal(grouped, labels, torch.tensor([1.0, 2.0, 2.0]).to(META)).device == META


@pytest.mark.parametrize("make", [
    lambda w, b: LinearHead(w, b, 3),
    lambda w, b: LWSHead(w, b, 3),
    lambda w, b: CosineHead(w, 30.0, groups=3),
])  # fmt: skip
def test_heads_stay_on_the_inputs_device(make):
    head = make(torch.randn(K, D).to(META), torch.zeros(K).to(META))
    x = torch.randn(4, D).to(META)
    assert head(x).device == META
    one = head.select(1)
    assert one.predict_logits(x).device == META
    if hasattr(one, "linear_params"):
        assert all(t.device == META for t in one.linear_params())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_its_pieces_on_the_features_device(name):
    method = METHODS[name]
    ctx = _ctx(META)
    settings = method.settings()[:2] or [{}]
    head = method.build_head(ctx, settings)
    logits = head(ctx.x[:6])
    assert logits.device == META
    if method.trains:
        for epoch in (0, ctx.epochs - 1):  # LDAM-DRW switches its weights half-way
            assert method.loss(ctx, settings)(logits, ctx.y[:6], epoch).device == META
    final = method.posthoc(head.select(0), ctx, settings[0])
    assert final.predict_logits(ctx.x[:6]).device == META


def _features(seed: int = 0, with_classifier: bool = True) -> FeatureSet:
    rng = np.random.default_rng(seed)
    counts = [30, 15, 8, 4, 3]
    centers = rng.normal(size=(K, D)) * 2

    def split(per_class):
        y = np.repeat(np.arange(K), per_class)
        return (centers[y] + rng.normal(size=(len(y), D))).astype(np.float32), y

    w = rng.normal(size=(K, D)).astype(np.float32) if with_classifier else None
    return FeatureSet(
        splits={"train": split(counts), "val": split([4] * K), "test": split([6] * K)},
        classes=[f"c{i}" for i in range(K)],
        init_weight=w,
        init_bias=np.zeros(K, np.float32) if with_classifier else None,
    )


@pytest.mark.parametrize("with_classifier", [True, False])
def test_a_whole_comparison_creates_no_tensor_off_the_features_device(with_classifier):
    """Features on the CPU, default device meta: a tensor made without naming the device
    of its inputs would be meta and raise; the comparison must finish, and agree with
    the same comparison under the ordinary default."""
    fs = _features(with_classifier=with_classifier)
    schedule = Schedule(epochs=2, batch_size=16)
    reference = compare(fs, list(METHODS.values()), schedule, lrs=(5e-3,), device="cpu")
    fs = _features(with_classifier=with_classifier)
    torch.set_default_device(META)
    try:
        results = compare(fs, list(METHODS.values()), schedule, lrs=(5e-3,), device="cpu")
    finally:
        torch.set_default_device(None)
    assert [r.method for r in results] == sorted(METHODS, key=list(METHODS).index)
    for a, b in zip(results, reference, strict=True):
        assert a.row() | {"time_s": 0} == b.row() | {"time_s": 0}


@pytest.mark.slow
def test_the_gpu_check_script_runs_through_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py is what a GPU owner runs when one is lent; its --cpu mode runs the
    same code paths here (augmentation parity, timed stage 1, a resumed two-trial tune, the whole
    pipeline), so the one short device run does not fail on the script itself."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("optuna")
    from .conftest import make_cifar_archive

    root = tmp_path / "data"
    make_cifar_archive(root, "cifar10", 120, 10)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    args = ["--cpu", "--out", str(tmp_path / "out"), "--root", str(root), "--steps", "1", "--max-per-class", "100"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["device"] == "cpu"
    assert report["augment"]["equal_share"] == 1.0  # the same device and seed: the same images
    assert [r["amp"] for r in report["stage1"]] == ["none", "bf16"]
    assert all(r["images_per_s"] > 0 for r in report["stage1"]) and report["stage1"][0]["ratio_to_fp32"] == 1.0
    assert report["tune"]["trial_counts"] == {"complete": 2}  # the second call resumed: no trial more
    assert report["pipeline"]["methods"] == 16
    assert "pipeline: 16 methods" in done.stdout
    # without --cpu and without CUDA, one line and exit code 2
    if not torch.cuda.is_available():
        refused = subprocess.run(
            [sys.executable, str(script), "--out", str(tmp_path / "no")], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "no CUDA device" in refused.stderr
