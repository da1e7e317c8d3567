"""Stage 1: train a backbone on the long-tailed set (cross-entropy, SGD, cosine schedule,
tuned weight decay and optional MaxNorm: the weight-balancing recipe).

One loop (:func:`train_one_epoch`), one evaluation (:func:`predict`), checkpoints each
epoch written atomically, ``resume`` continuing where a killed run stopped. On CPU with
deterministic settings a resumed run ends with the same weights as an uninterrupted one:
all randomness of an epoch comes from generators seeded by ``(seed, epoch, rank)``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..analysis.metrics import accuracy_report
from ..config import TRAINS_THE_SAME, RunConfig, config_differences, dump_yaml, same_config, to_dict
from ..data import LongTailedDataset, Split, build_dataset
from ..data.augment import BatchAugment, BatchMix, iterate_batches
from ..data.policies import BatchPolicy
from ..data.transforms import ImagePathDataset
from ..env_info import environment
from ..errors import LortError
from ..io import failpoint, remove_stale_temporaries, write_json, write_text
from ..layout import Stage1Run
from ..models import create_model, model_input_size
from ..models.base import max_norm_
from ..runtime.checkpoint import load_model_state, read_checkpoint, save_checkpoint
from ..runtime.compilation import choose_compile, compiled
from ..runtime.distributed import DistInfo, barrier, cleanup, setup_distributed
from ..runtime.precision import Precision, autocast, choose_precision, cpu_capability

SYNC_EVERY = 50  # steps between the host's reads of the running loss on an accelerator


def seeded(*parts: int) -> torch.Generator:
    """A generator whose seed is a stable function of ``parts`` (seed, epoch, rank...)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def cosine_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_factor(step: int, steps_per_epoch: int, warmup: int, milestones: list[int], decay: float) -> float:
    """The step schedule: after ``warmup`` steps of linear warm-up, ``decay ** k`` where ``k``
    milestones (in epochs) have passed, so with milestones 160, 180 epochs 161-180 (counted
    from 1) run at ``decay`` and 181 on at ``decay ** 2`` (as LDAM-DRW's code decays)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    epoch = step // max(1, steps_per_epoch)
    return decay ** sum(epoch >= m for m in milestones)


def lr_factor(s1, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor of ``stage1.lr`` at each optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``."""
    total, warm = steps_per_epoch * s1.epochs, steps_per_epoch * s1.warmup_epochs
    if s1.lr_schedule == "step":
        milestones, decay = list(s1.lr_milestones), s1.lr_decay
        return lambda step: step_factor(step, steps_per_epoch, warm, milestones, decay)
    return lambda step: cosine_factor(step, total, warm)


def _shard(n: int, epoch_gen: torch.Generator, info: DistInfo, batch_size: int) -> np.ndarray:
    """This rank's indices of an epoch: one shared permutation, padded, split by rank."""
    order = torch.randperm(n, generator=epoch_gen).numpy()
    if info.world_size > 1:
        per_rank = math.ceil(n / info.world_size)
        order = np.concatenate([order, order[: per_rank * info.world_size - n]])
        order = order[info.rank :: info.world_size]
    if len(order) % batch_size == 1:  # a batch of one breaks BatchNorm in train mode
        order = order[:-1]
    return order


def batch_augment(s1) -> BatchAugment:
    """The training augmentation of ``stage1``: crop + flip, then its policy and Cutout."""
    policy = None if s1.augment == "standard" else BatchPolicy(s1.augment, s1.randaugment_ops, s1.randaugment_magnitude)
    return BatchAugment(policy=policy, cutout=s1.cutout)


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor, lam: float, smoothing: float):
    """Cross-entropy of a (possibly mixed) batch: ``lam * CE(y) + (1 - lam) * CE(partner)``."""
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if lam < 1.0:
        loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=smoothing)
    return loss


def train_batches(
    split: Split, epoch: int, cfg: RunConfig, info: DistInfo, input_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    s1 = cfg.stage1
    shard = _shard(len(split), seeded(s1.seed, epoch), info, s1.batch_size)
    if split.images is not None:
        yield from iterate_batches(
            split.images,
            split.labels,
            s1.batch_size,
            shuffle=False,
            generator=seeded(s1.seed, epoch, info.rank, 1),
            augment=batch_augment(s1),
            indices=shard,
            device=info.device,
        )
        return
    dataset = ImagePathDataset(split.paths, split.labels, train=True, size=input_size, seed=s1.seed)
    dataset.set_epoch(epoch)
    yield from torch.utils.data.DataLoader(
        dataset,
        batch_size=s1.batch_size,
        sampler=shard.tolist(),
        num_workers=s1.workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=False,
    )


def eval_batches(split: Split, batch_size: int, input_size: int, workers: int = 0, device=None):
    if split.images is not None:
        return iterate_batches(split.images, split.labels, batch_size, shuffle=False, device=device)
    dataset = ImagePathDataset(split.paths, split.labels, train=False, size=input_size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)


@torch.no_grad()
def predict(
    fn,
    split: Split,
    batch_size: int,
    device: torch.device,
    input_size: int,
    workers: int = 0,
    channels_last: bool = True,
    desc: str | None = None,
) -> np.ndarray:
    """``fn(x)`` over a split in order (eval transforms), concatenated as float32 numpy (one
    copy back from the device at the end)."""
    outs = []
    batches = eval_batches(split, batch_size, input_size, workers, device)
    for x, _ in tqdm(batches, desc=desc, disable=desc is None, leave=False, unit="batch"):
        x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        outs.append(fn(x).float())
    return torch.cat(outs).cpu().numpy()


def train_one_epoch(
    model: nn.Module,
    classifier: nn.Linear,
    batches,
    optimizer,
    scheduler,
    scaler,
    cfg: RunConfig,
    info: DistInfo,
    epoch: int,
    steps: int,
    precision: Precision | None = None,
    eager: nn.Module | None = None,
) -> dict:
    """One epoch of ``model`` (compiled or not; ``eager``, the same model uncompiled, takes
    batches shorter than ``stage1.batch_size``).

    The loss and the correct count add up on the device; the host reads them (and checks
    that the loss is finite) every step on the CPU, where reading costs nothing, and every
    :data:`SYNC_EVERY` steps and at the epoch's end on an accelerator, which would otherwise
    stall on each read."""
    model.train()
    s1 = cfg.stage1
    sync_every = 1 if info.device.type == "cpu" else SYNC_EVERY
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    correct_sum = torch.zeros((), dtype=torch.long, device=info.device)
    seen = 0

    def read_loss(step: int, loss: torch.Tensor) -> float:
        total = float(loss_sum)  # one read from the device (a non-finite loss makes the sum so)
        if not math.isfinite(total):
            where = f"step {step + 1}" if sync_every == 1 else f"by step {step + 1}"
            raise LortError(
                f"stage 1 loss became {float(loss.detach())} at epoch {epoch + 1} {where}; "
                f"the last good checkpoint is kept; lower stage1.lr (now {s1.lr})"
            )
        return total

    t0 = time.perf_counter()
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{s1.epochs}",
        disable=not info.is_main or None,
        unit="step",
        leave=False,
    )
    memory_format = torch.channels_last if s1.channels_last else torch.contiguous_format
    mix = BatchMix(s1.mixup_alpha, s1.cutmix_alpha, s1.mix_prob)
    mix_rng = np.random.default_rng(seeded(s1.seed, epoch, info.rank, 2).initial_seed())
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break
        x = x.to(info.device, memory_format=memory_format, non_blocking=True)
        y = y.to(info.device, non_blocking=True)
        x, partner, lam = mix(x, y, mix_rng)
        with autocast(precision, info.device):
            # A compiled model sees full batches only: an epoch's shorter last batch runs eagerly
            # (the same weights), instead of compiling a second graph for its shape.
            fn = model if len(y) == s1.batch_size or eager is None else eager
            logits = fn(x)
            loss = mixed_loss(logits.float(), y, partner, lam, s1.label_smoothing)
        n = len(y)
        loss_sum += loss.detach().double() * n
        correct_sum += (logits.argmax(1) == y).sum()
        seen += n
        if (step + 1) % sync_every == 0:
            total_loss = read_loss(step, loss)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{rate * info.world_size:.0f}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if s1.max_norm:
            max_norm_(classifier.weight, s1.max_norm)
        failpoint("stage1-step")
        bar.update(1)
    bar.close()
    total_loss = read_loss(step, loss) if seen else 0.0
    correct = int(correct_sum)
    elapsed = time.perf_counter() - t0
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "images_per_s": seen * info.world_size / max(elapsed, 1e-9),
        "epoch_time_s": elapsed,
    }


def _check_out_dir(out: Path, cfg: RunConfig, resume: bool) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run; errors on a foreign run."""
    last = Stage1Run(out).last
    if not last.exists():
        config = Stage1Run(out).config
        if config.exists() and not resume and not same_config(config, cfg):
            raise LortError(f"{out} already holds a different run; choose another --out")
        return None
    if not resume:
        raise LortError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    ckpt = read_checkpoint(last)
    # speed settings (workers, compile) and the test trace train the same either way
    for key, was, now in config_differences(ckpt.get("config", {}), cfg, ("data", "stage1"), TRAINS_THE_SAME):
        raise LortError(
            f"{last}: was trained with {key}={was!r}, not {now!r}; resume with the same config or choose another --out"
        )
    return ckpt


def _earlier_parts(ckpt: dict | None, environment_file: Path) -> list[dict]:
    """The environments of the parts of a resumed run before this one (machine, precision,
    compile: a run continued on another kind of CPU changes its arithmetic from there on),
    from the checkpoint, else from the folder's environment.json of the part before."""
    if ckpt is None:
        return []
    if "environments" in ckpt:
        return [dict(p) for p in ckpt["environments"] if p.get("from_epoch", 1) <= ckpt["epoch"]]
    try:  # a checkpoint written before the parts were kept
        earlier = json.loads(environment_file.read_text())
    except (OSError, ValueError):
        return []
    parts = earlier.pop("parts", None) or [earlier]
    return [p | {"from_epoch": p.get("from_epoch", 1)} for p in parts]


def _environment_record(parts: list[dict]) -> dict:
    """environment.json of a stage-1 run: the current part's environment at the top level (as
    every run folder's), and with ``parts`` (each with its first epoch) when the run was
    resumed, so the arithmetic of every epoch stays on record."""
    record = dict(parts[-1])
    if len(parts) > 1:
        record["parts"] = parts
    return record


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    dataset: LongTailedDataset | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    evaluate_test: bool = True,
) -> dict:
    """Train stage 1 into ``out_dir``; returns the summary (also written to summary.json).

    ``on_epoch`` is called on the main process with each epoch's record (its validation
    scores included) after the epoch's checkpoint is written; an exception it raises stops
    the training there (``lort tune``'s pruner does so). ``evaluate_test=False`` leaves the
    test split untouched (the summary's ``test`` is None), as a search's trials must.
    """
    info = setup_distributed()
    try:
        return _train(cfg, Path(out_dir), resume, dataset, info, on_epoch, evaluate_test)
    finally:
        cleanup(info)


def _train(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    dataset: LongTailedDataset | None,
    info: DistInfo,
    on_epoch: Callable[[dict], None] | None = None,
    evaluate_test: bool = True,
) -> dict:
    s1 = cfg.stage1
    if (Stage1Run(out).summary).exists() and resume:
        return json.loads((Stage1Run(out).summary).read_text())
    ckpt = _check_out_dir(out, cfg, resume)
    if s1.deterministic and info.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(s1.seed)
    ds = dataset or build_dataset(cfg.data)
    if ckpt is not None:
        ds.require_trained_on(ckpt.get("train_counts"), Stage1Run(out).last, "it cannot resume; choose another --out")
    input_size = model_input_size(s1.model)
    model = create_model(s1.model, ds.num_classes).to(info.device)
    if s1.channels_last:
        model = model.to(memory_format=torch.channels_last)
    counts = ds.train_counts
    steps = math.ceil(len(_shard(len(ds.train), seeded(0), info, s1.batch_size)) / s1.batch_size)
    if s1.steps_per_epoch:
        steps = min(steps, s1.steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=s1.lr, momentum=s1.momentum, weight_decay=s1.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(s1, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=s1.amp == "fp16" and info.device.type == "cuda")
    start_epoch, best = 0, {"epoch": None, "val_balanced_acc": -1.0}
    if ckpt is not None:
        load_model_state(model, ckpt["model"], str(Stage1Run(out).last))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch = ckpt["epoch"]
        best = ckpt["best"]
    raw_model = model
    classifier = raw_model.get_classifier()
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    precision = choose_precision(s1.amp, info.device)
    compiling = choose_compile(s1.compile, info.device, steps * (s1.epochs - start_epoch))
    train_fn = compiled(model, compiling)
    metrics_path = Stage1Run(out).metrics
    here = environment(s1.seed) | {
        "cpu": cpu_capability().describe(),
        "world_size": info.world_size,
        "precision": precision.to_dict(),
        "compile": compiling.to_dict(),
        "from_epoch": start_epoch + 1,
    }
    parts = _earlier_parts(ckpt, Stage1Run(out).environment) + [here]
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(Stage1Run(out).config, dump_yaml(cfg))
        write_json(Stage1Run(out).environment, _environment_record(parts))
        if dataset is None:  # built here (lort train); a caller that passed it has said what it holds
            tqdm.write(ds.describe())
        tqdm.write(f"stage 1 precision: {precision.name} ({precision.reason})")
        tqdm.write(f"stage 1 torch.compile: {'on' if compiling.enabled else 'off'} ({compiling.reason})")
        write_json(Stage1Run(out).dataset, ds.summary())
        remove_stale_temporaries(out)  # a writer killed before its rename
        if ckpt is not None and "metrics" in ckpt:  # the log as of the checkpoint (a kill may fall in between)
            write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in ckpt["metrics"]))
        elif metrics_path.exists():  # drop epochs a killed run logged after its last checkpoint
            kept = [
                ln
                for ln in metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["epoch"] <= start_epoch
            ]
            write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    history = list(ckpt.get("metrics", [])) if ckpt is not None else []
    for epoch in range(start_epoch, s1.epochs):
        batches = train_batches(ds.train, epoch, cfg, info, input_size)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record |= train_one_epoch(
            train_fn, classifier, batches, optimizer, scheduler, scaler, cfg, info, epoch, steps, precision, model
        )
        if (
            info.is_main
            and ds.val is not None
            and len(ds.val)
            and ((epoch + 1) % s1.eval_every == 0 or epoch + 1 == s1.epochs)
        ):
            raw_model.eval()
            logits = predict(raw_model, ds.val, s1.eval_batch_size, info.device, input_size, 0, s1.channels_last)
            rep = accuracy_report(logits, ds.val.labels, counts)
            record |= {f"val_{k}": v for k, v in rep.items() if k != "per_class"}
        if info.is_main and s1.test_trace and evaluate_test:  # for information: the published protocols' figure
            raw_model.eval()
            logits = predict(raw_model, ds.test, s1.eval_batch_size, info.device, input_size, 0, s1.channels_last)
            record["test_acc_information"] = accuracy_report(logits, ds.test.labels, counts)["acc"]
        if info.is_main:
            history.append(record)
            improved = record.get("val_balanced_acc", -1.0) > best["val_balanced_acc"]
            if improved:
                best = {"epoch": epoch + 1, "val_balanced_acc": record["val_balanced_acc"]}
            state = {
                "arch": s1.model,
                "num_classes": ds.num_classes,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "rng": {"torch": torch.get_rng_state()},
                "config": to_dict(cfg),
                "classes": ds.classes,
                "train_counts": counts.tolist(),
                "metrics": history,
                "environments": parts,
            }
            if improved:
                save_checkpoint(Stage1Run(out).best, **{k: v for k, v in state.items() if k not in ("optimizer",)})
            save_checkpoint(Stage1Run(out).last, **state)
            _append_jsonl(metrics_path, record)
            val = record.get("val_balanced_acc")
            tqdm.write(
                f"epoch {epoch + 1}/{s1.epochs}  loss {record['train_loss']:.4f}  train acc {record['train_acc']:.3f}"
                + (
                    f"  val acc {val:.3f} ("
                    + ", ".join(f"{g} {_pct(record['val_' + g])}" for g in ("many", "medium", "few"))
                    + ")"
                    if val is not None
                    else ""
                )
                + (
                    f"  test acc (information) {record['test_acc_information']:.3f}"
                    if "test_acc_information" in record
                    else ""
                )
                + f"  {record['images_per_s']:.0f} img/s"
            )
            if on_epoch is not None:
                on_epoch(record)
        barrier(info)
    summary = _finish(raw_model, ds, cfg, out, info, best, input_size, history, evaluate_test)
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _replica_checksum(model: nn.Module, info: DistInfo) -> list[float]:
    """Sum of all parameters on each rank (gathered), to show replicas stayed in sync."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    if not info.enabled:
        return [float(local)]
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    torch.distributed.all_gather(gathered, local.to(info.device))
    return [float(g) for g in gathered]


def _finish(
    model,
    ds: LongTailedDataset,
    cfg: RunConfig,
    out: Path,
    info: DistInfo,
    best: dict,
    input_size: int,
    history: list[dict],
    evaluate_test: bool = True,
):
    checksums = _replica_checksum(model, info)
    if not info.is_main:
        return {}
    selected = (Stage1Run(out).best if best["epoch"] is not None else Stage1Run(out).last).name
    ckpt = read_checkpoint(out / selected)
    load_model_state(model, ckpt["model"], str(out / selected))
    model.eval()
    s1 = cfg.stage1
    test = None
    if evaluate_test:
        logits = predict(model, ds.test, s1.eval_batch_size, info.device, input_size, 0, s1.channels_last)
        test = accuracy_report(logits, ds.test.labels, ds.train_counts)
    traced = [(r["epoch"], r["test_acc_information"]) for r in history if "test_acc_information" in r]
    summary = {
        "model": s1.model,
        "epochs": s1.epochs,
        "selected_checkpoint": selected,
        "selected_epoch": ckpt["epoch"],
        "selected_by": "validation balanced accuracy"
        if best["epoch"] is not None
        else "last epoch (no validation split)",
        "val_balanced_acc": best["val_balanced_acc"] if best["epoch"] is not None else None,
        "test": test,
        **(
            {
                "test_trace_information": {
                    "epochs": len(traced),
                    "best_epoch": max(traced, key=lambda t: t[1])[0],
                    "best_acc": max(t[1] for t in traced),
                    "last_acc": traced[-1][1],
                    "note": "the best test epoch is the published CIFAR-LT codes' figure (best_acc1); "
                    "information only, nothing here was chosen by it",
                }
            }
            if traced
            else {}
        ),
        "world_size": info.world_size,
        "replica_param_sums": checksums,
    }
    write_json(Stage1Run(out).summary, summary)
    return summary
