from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from lort.cli import main
from lort.config import load_config
from lort.errors import LortError
from lort.io import FAILPOINT_ENV
from lort.models import create_model, list_models
from lort.models.base import max_norm_
from lort.runtime.checkpoint import load_model, read_checkpoint
from lort.runtime.compilation import cpp_compiler
from lort.stage1.train import cosine_factor, lr_factor, step_factor, train

from .conftest import SHARED_CIFAR10, make_cifar_archive


def test_every_model_separates_features_and_classifier():
    for name, size, dim in [("resnet32", 32, 64), ("resnet34_cifar", 32, 512)]:
        model = create_model(name, 7).eval()
        x = torch.randn(2, 3, size, size)
        feats = model.forward_features(x)
        assert feats.shape == (2, dim)
        assert torch.allclose(model(x), model.get_classifier()(feats))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
    assert {"resnet50", "resnext50_32x4d"} <= set(list_models())


def _out_of_place_features(model, x):
    """ResNet-32 features written out of place, op by op, from the model's own layers."""
    import torch.nn.functional as F

    out = F.relu(model.bn1(model.conv1(x)))
    for block in model.layers:
        y = F.relu(block.bn1(block.conv1(out)))
        out = F.relu(block.bn2(block.conv2(y)) + block._identity(out))
    return F.adaptive_avg_pool2d(out, 1).flatten(1)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_in_place_blocks_give_the_out_of_place_loss_and_gradients(memory_format):
    torch.manual_seed(0)
    model = create_model("resnet32", 5).to(memory_format=memory_format).train()
    x = torch.randn(8, 3, 32, 32).to(memory_format=memory_format)
    y = torch.randint(0, 5, (8,))
    results = []
    for features in (model.forward_features, lambda t: _out_of_place_features(model, t)):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model.forward_head(features(x)), y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert len(grads_a) == len(grads_b) > 90
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)


def test_resnet32_has_the_standard_size():
    n = sum(p.numel() for p in create_model("resnet32", 10).parameters())
    assert 0.45e6 < n < 0.48e6  # 0.46M, He et al. (2016)


def test_imagenet_backbones_have_2048_features_and_standard_sizes():
    m = create_model("resnet50", 1000)
    assert m.num_features == 2048
    assert 25.0e6 < sum(p.numel() for p in m.parameters()) < 25.7e6  # 25.6M
    x = create_model("resnext50_32x4d", 1000)
    assert 24.8e6 < sum(p.numel() for p in x.parameters()) < 25.2e6  # 25.0M


def test_max_norm_projects_only_rows_above_the_bound():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    max_norm_(w, 1.0)
    assert torch.allclose(w.norm(dim=1), torch.tensor([1.0, 0.5]))


def test_cosine_schedule_with_warmup():
    assert cosine_factor(0, 100, 10) == pytest.approx(0.1)
    assert cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert cosine_factor(100, 100, 10) == pytest.approx(0.0)


def test_step_schedule_decays_after_each_milestone_as_ldam_drw_does():
    """LDAM-DRW's code: lr * epoch / 5 for epochs 1-5, lr to 160, lr * 0.01 for 161-180, then
    lr * 1e-4 (epochs counted from 1; here 0-based epoch e starts at step e * 10)."""
    s1 = load_config(
        None,
        {
            "stage1.warmup_epochs": 5,
            "stage1.lr_schedule": "step",
            "stage1.lr_milestones": "160,180",
            "stage1.lr_decay": 0.01,
        },
    ).stage1
    f = lr_factor(s1, 10)
    assert f(0) == pytest.approx(1 / 50) and f(49) == pytest.approx(1.0)  # warm-up by step over 5 epochs
    assert f(50) == 1.0 and f(1599) == 1.0  # epochs 6-160
    assert f(1600) == pytest.approx(0.01) and f(1799) == pytest.approx(0.01)  # epochs 161-180
    assert f(1800) == pytest.approx(1e-4) and f(1999) == pytest.approx(1e-4)  # epochs 181-200
    assert step_factor(25, 10, 0, [2], 0.5) == 0.5 and step_factor(19, 10, 0, [2], 0.5) == 1.0
    cosine = load_config(None, {"stage1.warmup_epochs": 5}).stage1
    assert lr_factor(cosine, 10)(1000) == pytest.approx(cosine_factor(1000, 2000, 50))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage1.lr_schedule": "linear"}, "stage1.lr_schedule must be one of cosine, step, got 'linear'"),
        ({"stage1.lr_schedule": "step"}, "stage1.lr_schedule step needs stage1.lr_milestones"),
        ({"stage1.lr_milestones": "160"}, "are read by lr_schedule step only"),
        ({"stage1.lr_schedule": "step", "stage1.lr_milestones": "180,160"}, "must be increasing epochs in (0, 200)"),
        ({"stage1.lr_schedule": "step", "stage1.lr_milestones": "200"}, "must be increasing epochs in (0, 200)"),
        (
            {"stage1.lr_schedule": "step", "stage1.lr_milestones": "160", "stage1.lr_decay": 0},
            "lr_decay must lie in (0, 1]",
        ),
    ],
)
def test_a_bad_step_schedule_is_refused_with_the_value(overrides, message):
    with pytest.raises(LortError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_a_run_follows_its_step_schedule(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 1)
    out = tmp_path / "run"
    cfg = _small_config(
        tmp_path,
        **{"stage1.lr": 0.05, "stage1.lr_schedule": "step", "stage1.lr_milestones": "2", "stage1.lr_decay": 0.1},
    )
    train(cfg, out)
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.05, 0.05, 0.005])  # each epoch's lr as it starts


def test_the_test_trace_records_each_epochs_test_accuracy_and_changes_no_weight(tmp_path):
    """stage1.test_trace: the test accuracy after every epoch, for information (the published
    CIFAR-LT codes report the best of them); the training, the checkpoints and the selection are
    those of the same run without it, and a run resumes with it switched on."""
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    plain, traced = tmp_path / "plain", tmp_path / "traced"
    train(_small_config(tmp_path), plain)
    summary = train(_small_config(tmp_path, **{"stage1.test_trace": True}), traced)
    records = [json.loads(ln) for ln in (traced / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test_acc_information" in r] == [1, 2, 3]
    trace = summary["test_trace_information"]
    accs = [r["test_acc_information"] for r in records]
    assert trace["best_acc"] == max(accs) and trace["last_acc"] == accs[-1] and trace["epochs"] == 3
    assert records[trace["best_epoch"] - 1]["test_acc_information"] == max(accs)
    # the selected epoch's traced figure is the one stage 1 reports on test
    assert records[summary["selected_epoch"] - 1]["test_acc_information"] == pytest.approx(summary["test"]["acc"])
    for name in ("best.pt", "last.pt"):
        a, b = _params(plain / name), _params(traced / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert json.loads((plain / "summary.json").read_text())["selected_epoch"] == summary["selected_epoch"]
    assert "test_trace_information" not in json.loads((plain / "summary.json").read_text())
    (plain / "summary.json").unlink()  # resumable: switching the trace on is not another training
    assert train(_small_config(tmp_path, **{"stage1.test_trace": True}), plain, resume=True)["selected_epoch"]


def _small_config(root, **extra):
    overrides = {
        "data.root": str(root),
        "data.max_per_class": 40,
        "data.imbalance_ratio": 10,
        "data.val_per_class": 4,
        "stage1.epochs": 3,
        "stage1.batch_size": 16,
        "stage1.eval_batch_size": 64,
    }
    overrides.update(extra)
    return load_config(None, overrides)


def _params(path):
    return read_checkpoint(path)["model"]


def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    full = tmp_path / "full"
    train(_small_config(tmp_path, **{"stage1.epochs": 6}), full)  # long enough to be killed mid-run
    cmd = [sys.executable, "-m", "lort", "train", "--out", str(tmp_path / "killed"),
           "--set", f"data.root={tmp_path}", "--set", "data.max_per_class=40", "--set", "data.imbalance_ratio=10",
           "--set", "data.val_per_class=4", "--epochs", "6", "--batch-size", "16",
           "--set", "stage1.eval_batch_size=64"]  # fmt: skip
    # killed by its own crash-test hook in the middle of epoch 3 (steps of the 6-epoch run are
    # counted, not timed): the same moment on a fast machine and a slow one
    steps_per_epoch = read_checkpoint(full / "last.pt")["scheduler"]["last_epoch"] // 6
    assert steps_per_epoch >= 2
    env = dict(os.environ, **{FAILPOINT_ENV: f"stage1-step:{2 * steps_per_epoch + steps_per_epoch // 2 + 1}"})
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    metrics = tmp_path / "killed" / "metrics.jsonl"
    assert metrics.read_text().count("\n") == 2  # two epochs logged, the third cut short
    assert not (tmp_path / "killed" / "summary.json").exists(), "run finished before it could be killed"
    assert main(["train", "--out", str(tmp_path / "killed"), "--resume", "--set", f"data.root={tmp_path}",
                 "--set", "data.max_per_class=40", "--set", "data.imbalance_ratio=10", "--set",
                 "data.val_per_class=4", "--epochs", "6", "--batch-size", "16",
                 "--set", "stage1.eval_batch_size=64"]) == 0  # fmt: skip
    a, b = _params(full / "last.pt"), _params(tmp_path / "killed" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2, 3, 4, 5, 6]


class _Stop(Exception):
    pass


def _stop_after_first_epoch(record):
    if record["epoch"] == 1:
        raise _Stop


def test_a_resumed_run_keeps_the_environment_of_each_part(tmp_path, monkeypatch):
    # a run continued on another machine changes its arithmetic from there on: both parts stay
    # on record, the checkpoint carrying the earlier ones (a clone may hold no environment.json)
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    cfg = _small_config(tmp_path, **{"stage1.epochs": 3})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    with pytest.raises(_Stop):
        train(cfg, tmp_path / "run", on_epoch=_stop_after_first_epoch)
    first = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert first["from_epoch"] == 1 and "parts" not in first
    (tmp_path / "run" / "environment.json").unlink()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a CPU described differently
    train(cfg, tmp_path / "run", resume=True, evaluate_test=False)
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert [p["from_epoch"] for p in env["parts"]] == [1, 2]
    assert env["parts"][0]["cpu"] == first["cpu"] and "ONEDNN_MAX_CPU_ISA" not in first["cpu"]
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in env["cpu"] and env["parts"][1] == {k: v for k, v in env.items() if k != "parts"}
    assert read_checkpoint(tmp_path / "run" / "last.pt")["environments"] == env["parts"]


def test_short_runs_stay_eager_and_record_why(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    train(_small_config(tmp_path, **{"stage1.epochs": 1}), tmp_path / "run")
    choice = json.loads((tmp_path / "run" / "environment.json").read_text())["compile"]
    assert choice["setting"] == "auto" and choice["enabled"] is False
    assert "training steps are fewer than" in choice["reason"]


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile needs a C++ compiler on the CPU")
def test_a_compiled_run_trains_and_runs_its_short_last_batch_eagerly(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    cfg = _small_config(tmp_path, **{"stage1.epochs": 2, "stage1.compile": True})
    summary = train(cfg, tmp_path / "run")
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["compile"]["enabled"] is True
    n_train = json.loads((tmp_path / "run" / "dataset.json").read_text())["train_size"]
    assert n_train % 16 not in (0, 1)  # so each epoch ends in a short batch, run eagerly
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in lines)
    final = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert final["test"]["acc"] == summary["test"]["acc"] and final["selected_epoch"] in (1, 2)


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 2)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lort", "train", "--out", str(out), "--set", f"data.root={tmp_path}",
           "--set", "data.max_per_class=40", "--set", "data.imbalance_ratio=10", "--set", "data.val_per_class=4",
           "--epochs", "2", "--batch-size", "8", "--set", "stage1.amp=none"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    sums = summary["replica_param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # the two ranks really trained (weights moved away from the seeded initialisation)
    torch.manual_seed(0)
    init = create_model("resnet32", 10)
    trained = _params(out / "last.pt")
    assert not torch.equal(init.state_dict()["fc.weight"], trained["fc.weight"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--lr", "0"], "stage1.lr must be > 0"),
        (["--set", "stage1.lrr=0.1"], "unknown config key stage1.lrr"),
        (["--set", "stage1.batch_size=two"], "stage1.batch_size: expected an integer"),
    ],
)
def test_bad_training_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    make_cifar_archive(tmp_path, "cifar10", 30, 1)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--root",
            str(tmp_path),
            "--imbalance-ratio",
            "10",
            "--epochs",
            "1",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err
    assert not (out / "last.pt").exists()


def test_checkpoint_errors(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 1)
    out = tmp_path / "run"
    train(_small_config(tmp_path, **{"stage1.epochs": 1}), out)
    with pytest.raises(LortError, match="is a resnet32, expected resnet34_cifar"):
        load_model(out / "last.pt", arch="resnet34_cifar")
    with pytest.raises(LortError, match="has 10 classes, the dataset 100"):
        load_model(out / "last.pt", num_classes=100)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes((out / "last.pt").read_bytes()[:5000])
    with pytest.raises(LortError, match="corrupt or truncated checkpoint"):
        load_model(bad)
    before = (out / "last.pt").read_bytes()
    assert main(["train", "--out", str(out), "--root", str(tmp_path), "--epochs", "1"]) == 2
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_short_run_on_shared_cifar10_learns(tmp_path, shared_cifar10_cache, monkeypatch):
    monkeypatch.setenv("LORT_CACHE", str(shared_cifar10_cache))
    cfg = load_config(
        None,
        {
            "data.root": str(SHARED_CIFAR10.parent),
            "data.imbalance_ratio": 10,
            "data.max_per_class": 1000,
            "stage1.epochs": 3,
            "stage1.lr": 0.02,
            "stage1.weight_decay": 5e-4,
        },
    )
    summary = train(cfg, tmp_path / "run")
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best_val = max(m["val_balanced_acc"] for m in metrics)
    assert best_val > 0.20, metrics  # chance is 0.10; this run reached 0.255 here
    assert summary["test"]["acc"] > 0.20
    assert metrics[-1]["val_balanced_acc"] > metrics[0]["val_balanced_acc"]
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert (
        env["precision"]["amp"] == "auto"
        and env["precision"]["dtype"] in ("fp32", "bf16")
        and env["precision"]["reason"]
    )


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", 50, 1)
    out = tmp_path / "run"
    train(_small_config(tmp_path, **{"stage1.epochs": 1}), out)
    good = (out / "last.pt").read_bytes()
    cfg = _small_config(
        tmp_path, **{"stage1.epochs": 3, "stage1.lr": 1e30, "stage1.amp": "none", "stage1.steps_per_epoch": 3}
    )
    with pytest.raises(
        LortError, match=r"stage 1 loss became (nan|inf) at epoch \d+ step \d+; the last good checkpoint is kept"
    ):
        train(cfg, tmp_path / "run2")
    assert (out / "last.pt").read_bytes() == good
    assert not (tmp_path / "run2" / "last.pt").exists() or read_checkpoint(tmp_path / "run2" / "last.pt")["epoch"] >= 1


def test_large_images_stream_through_dataloader_workers(tmp_path):
    """The 224-pixel path: an image-folder tree of large JPEGs, decoded by DataLoader
    workers with the random-resized-crop transform, trained with a 224-pixel backbone."""
    from .conftest import make_image_tree

    root = make_image_tree(tmp_path / "big", {"a": (6, 2), "b": (3, 2)}, size=96, fmt="JPEG")
    cfg = load_config(None, {
        "data.dataset": "imagefolder", "data.root": str(root), "data.profile": "none", "data.val_per_class": 1,
        "stage1.model": "resnet50", "stage1.epochs": 1, "stage1.batch_size": 2, "stage1.steps_per_epoch": 2,
        "stage1.workers": 2, "stage1.eval_batch_size": 4, "stage1.amp": "none",
    })  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    assert summary["model"] == "resnet50" and summary["test"]["acc"] is not None
    assert read_checkpoint(tmp_path / "run" / "last.pt")["arch"] == "resnet50"
