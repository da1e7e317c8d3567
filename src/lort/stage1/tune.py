"""``lort tune``: an Optuna search over stage-1 hyperparameters, scored on validation.

Each trial trains stage 1 with a short proxy schedule (``epochs``; the warm-up scaled with
it) and is scored by its best validation balanced accuracy, the rule that also picks the
stage-1 checkpoint. The test split is never read. After every epoch the trial reports its
best-so-far score to the pruner (Hyperband by default), which stops trials that trail the
others at the same epoch. Trials live in an Optuna storage, by default ``study.db``
(SQLite) in the tune folder: a killed search resumes where it stopped, and ``--storage URL``
lets several processes or machines share one study. The winner is written as
``best.yaml``, the full-schedule config that ``lort run`` takes as it is.

The folder::

    study.db              Optuna storage (unless --storage)
    tune.json             the study: space, proxy, sampler, pruner, best trial, trial counts
    trials.json, .csv     one row per trial: state, score, hyperparameters, epochs trained
    best.yaml             the chosen config, full schedule
    trials/NNNN/          each trial's stage-1 folder (metrics, config; checkpoints removed)
    figures/tune_history.png, report.md
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TRAINS_THE_SAME, RunConfig, Stage1Config, dump_yaml, load_config, read_yaml, to_dict
from ..errors import LortError
from ..io import write_json, write_text

SAMPLERS = ("tpe", "gp", "random")
PRUNERS = ("hyperband", "asha", "median", "none")
DEFAULT_STUDY = "lort-tune"
HEARTBEAT_S = 30  # a running trial's process writes a heartbeat this often
GRACE_S = 120  # a trial with no heartbeat for this long is taken as dead: failed and queued once more
STORAGE_ATTEMPTS = 8  # tries to open a storage that another worker is creating at the same moment
# Keys the search itself controls, or that change no training outcome.
NOT_SEARCHABLE = ("epochs", "steps_per_epoch", "eval_every", "eval_batch_size", "seed", *TRAINS_THE_SAME)
# The default space: the two knobs the recipe says to tune, over the range the field uses
# for SGD on CIFAR-style and ImageNet-style long-tailed sets.
DEFAULT_SPACE: dict[str, dict] = {
    "stage1.lr": {"low": 0.01, "high": 0.4, "log": True},
    "stage1.weight_decay": {"low": 1e-4, "high": 1e-2, "log": True},
}
SPEC_KEYS = {"low", "high", "log", "int", "step", "choices"}


@dataclass(frozen=True)
class Dimension:
    """One searched ``stage1.*`` key: a range (``low``, ``high``, ``log``, ``int``, ``step``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    step: float | None = None
    choices: tuple | None = None

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def endpoints(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def to_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high, "log": self.log}
        if self.integer:
            out["int"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def parse_space(tree: Any, where: str) -> list[Dimension]:
    """``{stage1.KEY: {low, high[, log, int, step]} | {choices: [...]}}`` -> dimensions.

    Bare ``KEY`` means ``stage1.KEY``. Errors name ``where`` and the key.
    """
    if not isinstance(tree, dict) or not tree:
        raise LortError(f"{where}: a search space is a non-empty mapping of stage1.KEY to a range or choices")
    fields = {f.name for f in dataclasses.fields(Stage1Config)}
    dims = []
    for raw_key, spec in tree.items():
        key = str(raw_key) if "." in str(raw_key) else f"stage1.{raw_key}"
        section, _, name = key.partition(".")
        if section != "stage1":
            raise LortError(f"{where}: {raw_key}: lort tune searches stage1.* keys only")
        if name not in fields:
            raise LortError(f"{where}: {raw_key}: not a stage1 key; known: {', '.join(sorted(fields))}")
        if name in NOT_SEARCHABLE:
            raise LortError(f"{where}: {raw_key}: set by the search itself or no training choice; not searchable")
        if not isinstance(spec, dict) or not spec or set(spec) - SPEC_KEYS:
            raise LortError(
                f"{where}: {key}: give {{low: A, high: B}} (with log: true, int: true or step: S) or {{choices: [...]}}"
            )
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise LortError(f"{where}: {key}: choices must be a non-empty list, alone")
            if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                raise LortError(f"{where}: {key}: choices must be numbers, strings, booleans or null")
            dims.append(Dimension(key, choices=tuple(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not math.isfinite(low) or not math.isfinite(high) or not low < high:
            raise LortError(f"{where}: {key}: low and high must be numbers with low < high (got {low!r}, {high!r})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise LortError(f"{where}: {key}: a log range needs low > 0 (got {low!r})")
        step = spec.get("step")
        if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
            raise LortError(f"{where}: {key}: step must be a positive number, and not with log")
        dims.append(Dimension(key, float(low), float(high), log, bool(spec.get("int", False)), step))
    return dims


def load_space(path: str | Path | None) -> list[Dimension]:
    """The space of a YAML file, or :data:`DEFAULT_SPACE`."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default space")
    return parse_space(read_yaml(path, "search-space file"), str(path))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key in ("data", "stage1", "stage2") and not prefix:
            out |= _flat(value, f"{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_values(cfg: RunConfig, values: dict) -> RunConfig:
    """``cfg`` with dotted keys replaced, validated as any config is."""
    return load_config(None, _flat(to_dict(cfg)) | dict(values))


def proxy_config(cfg: RunConfig, epochs: int) -> RunConfig:
    """The trial schedule: ``epochs`` epochs, the warm-up and a step schedule's milestones
    scaled by the same factor (milestones that would coincide or fall outside are dropped)."""
    s1 = cfg.stage1
    warm = s1.warmup_epochs
    scaled = 0 if warm == 0 else max(1, round(warm * epochs / s1.epochs))
    values = {"stage1.epochs": epochs, "stage1.warmup_epochs": min(scaled, max(epochs - 1, 0))}
    if s1.lr_schedule == "step":
        kept = sorted({round(m * epochs / s1.epochs) for m in s1.lr_milestones} & set(range(1, epochs)))
        values |= (
            {"stage1.lr_milestones": kept} if kept else {"stage1.lr_schedule": "cosine", "stage1.lr_milestones": []}
        )
    return with_values(cfg, values)


# Stage-1 keys that slow early learning and pay off late: a short proxy, or a pruner reading the
# early epochs, judges them unfairly. Evidence (results/stage1_recipes/): on CIFAR-10-LT IR 100,
# 15-epoch proxies ranked AutoAugment + Cutout below the same schedule without it, on validation
# and on test alike, where the 200-epoch runs put it 6.4 points above; within those 200-epoch
# runs its best validation score trailed the plain schedule's until epoch 112.
SLOW_PAYING_KEYS = (
    "stage1.augment",
    "stage1.cutout",
    "stage1.mixup_alpha",
    "stage1.cutmix_alpha",
    "stage1.mix_prob",
    "stage1.label_smoothing",
    "stage1.randaugment_ops",
    "stage1.randaugment_magnitude",
)


def proxy_caveat(keys: list[str], proxy_epochs: int, full_epochs: int, pruner: str = "none") -> str | None:
    """A warning where the space searches regularisers on a proxy shorter than the schedule, or
    with a pruner that stops trials from their early epochs."""
    slow = [k for k in keys if k in SLOW_PAYING_KEYS]
    short, pruned = proxy_epochs < full_epochs, pruner != "none"
    if not slow or not (short or pruned):
        return None
    how = []
    if short:
        how.append(f"a {proxy_epochs}-epoch proxy of the {full_epochs}-epoch schedule")
    if pruned:
        how.append(f"the {pruner} pruner, which stops trials from their early epochs")
    return (
        f"the space searches {', '.join(slow)} with {' and '.join(how)}; strong regularisers learn slowly and pay off late, "
        "so early scores favour the weak ones (on CIFAR-10-LT IR 100, 15-epoch proxies ranked AutoAugment + "
        "Cutout below plain training on validation and on test, where the 200-epoch runs put it 6.4 points above, "
        "and within those runs its best validation score trailed until epoch 112 of 200: results/stage1_recipes "
        "in lort's repository). Fix those keys by hand and compare full runs on validation, or search them with "
        "--proxy-epochs equal to the schedule and --pruner none"
    )


def _optuna():
    try:
        import optuna
    except ImportError:
        raise LortError("lort tune needs Optuna: pip install 'lort[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def make_sampler(name: str, seed: int, trials: int, shared: bool = False):
    """``shared``: other processes work on the same study; TPE then treats their running
    trials as scored at the worst value so far (Optuna's constant liar), not as free points."""
    optuna = _optuna()
    startup = max(3, min(10, trials // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=shared)
    if name == "gp":
        try:
            import scipy  # noqa: F401  (Optuna's GP sampler optimises its acquisition with SciPy)
        except ImportError:
            raise LortError("--sampler gp needs SciPy: pip install scipy") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise LortError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int):
    """Early stopping on the per-epoch curve, never before a third of the proxy schedule.

    Earlier rungs judged noise in the one study that measured it (``results/cifar10_lt_ir100_tune``,
    a 15-epoch proxy and 20 validation images a class): the four completed trials' scores after
    3 epochs ranked them in the reverse order of their scores after 15.
    """
    optuna = _optuna()
    first = max(1, epochs // 3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=epochs, reduction_factor=3)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise LortError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def sampler_seed(seed: int, trials_done: int, pid: int | None = None) -> int:
    """The sampler's seed for a (re)started search: hashed from the user's seed, the trials
    already in the study and, for a shared study, the process id. Hashed, not summed: two
    workers whose pids and trial counts differ by one would share a sum, and propose the same points."""
    state = [seed, trials_done] + ([] if pid is None else [pid])
    return int(np.random.SeedSequence(state).generate_state(1)[0])


def default_storage(out: Path) -> str:
    """The storage URL a tune folder uses without --storage: ``study.db`` (SQLite) in it."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def open_storage(storage: str | None, out: Path):
    """Optuna's RDB storage with heartbeats: a trial whose process died is failed after the
    grace period and re-queued once with the same hyperparameters."""
    optuna = _optuna()
    url = storage or default_storage(out)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna 4.9 and later
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    # Workers started together on a fresh storage race to create its schema: the loser sees a
    # unique-constraint (or locked-database) error, and a moment later finds the schema made.
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry
            ), url
        except Exception as exc:  # noqa: BLE001 (SQLAlchemy's errors for a bad URL are many)
            racing = type(exc).__name__ in ("IntegrityError", "OperationalError") and "no such" not in str(exc)
            if not racing or attempt == STORAGE_ATTEMPTS - 1:
                raise LortError(f"--storage {url}: cannot open ({type(exc).__name__}: {exc})") from None
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def study_signature(cfg: RunConfig, dims: list[Dimension], epochs: int) -> dict:
    """What a study was made for: resuming it with anything else would mix two searches."""
    return {"config": to_dict(cfg), "space": {d.key: d.to_dict() for d in dims}, "proxy_epochs": epochs}


def tune(
    cfg: RunConfig,
    out: str | Path,
    trials: int = 20,
    epochs: int | None = None,
    sampler: str = "tpe",
    pruner: str = "hyperband",
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    space: list[Dimension] | None = None,
    seed: int = 0,
    timeout: float | None = None,
    keep_checkpoints: bool = False,
    dataset=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) the search in ``out``; returns the ``tune.json`` summary."""
    from ..data import build_dataset
    from .train import train

    if trials < 1:
        raise LortError(f"--trials {trials}: give at least 1")
    s1 = cfg.stage1
    epochs = epochs if epochs is not None else max(1, s1.epochs // 4)
    if not 1 <= epochs <= s1.epochs:
        raise LortError(f"--epochs {epochs}: the proxy schedule must be 1 to stage1.epochs ({s1.epochs}) epochs")
    dims = space if space is not None else load_space(None)
    for d in dims:  # every end of the space must make a valid config, before any training
        for value in d.endpoints():
            try:
                with_values(cfg, {d.key: int(value) if d.integer else value})
            except LortError as exc:
                raise LortError(f"search space: {d.key}={value!r} is not a valid config ({exc})") from None
    optuna = _optuna()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rdb, url = open_storage(storage, out)
    sig = study_signature(cfg, dims, epochs)
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(sampler, seed, trials),
        pruner=make_pruner(pruner, epochs),
    )
    recorded = study.user_attrs.get("signature")
    if recorded is None:
        study.set_user_attr("signature", json.loads(json.dumps(sig)))
    elif recorded != json.loads(json.dumps(sig)):
        raise LortError(
            f"study {study_name!r} in {url} was made with another config, space or proxy; "
            "resume with the same ones, or give another --study-name or --out"
        )
    # Trials of processes that died (no heartbeat for the grace period) are failed now, and
    # queued once more with their hyperparameters, even when this call runs no trial itself.
    optuna.storages.fail_stale_trials(study)
    # A resumed sampler must not re-propose the points of its first run, nor two processes
    # sharing a study each other's: the seed moves with the trials done (and the process).
    shared = storage is not None
    study.sampler = make_sampler(
        sampler, sampler_seed(seed, len(study.trials), os.getpid() if shared else None), trials, shared
    )
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    if ds.val is None or not len(ds.val):
        raise LortError(
            "lort tune scores trials on the validation split, and this dataset has none; "
            "set data.val_per_class (CIFAR) or give a validation list"
        )
    val_counts = [int(c) for c in np.bincount(np.asarray(ds.val.labels), minlength=ds.num_classes)]
    data_line = ds.describe().removeprefix("data: ")
    proxy = proxy_config(cfg, epochs)
    state = optuna.trial.TrialState

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))

    def objective(trial) -> float:
        values = {d.key: d.suggest(trial) for d in dims}
        folder = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("folder", str(folder.relative_to(out)))
        if folder.exists():  # trial numbers are unique in a study: a leftover of a deleted one
            shutil.rmtree(folder)
        best = [-math.inf]

        def on_epoch(record: dict) -> None:
            score = record.get("val_balanced_acc")
            if score is None:
                return
            best[0] = max(best[0], score)
            trial.set_user_attr("epochs_trained", record["epoch"])
            trial.report(best[0], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        try:
            summary = train(with_values(proxy, values), folder, dataset=ds, on_epoch=on_epoch, evaluate_test=False)
        except LortError as exc:  # e.g. a learning rate that makes the loss diverge: a failed trial
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            if not keep_checkpoints:
                for ckpt in folder.glob("*.pt"):
                    ckpt.unlink()
        return float(summary["val_balanced_acc"])

    started = time.monotonic()

    def progress(study_, trial) -> None:
        done = finished()
        values = " ".join(f"{k.split('.', 1)[1]}={format_value(v)}" for k, v in trial.params.items())
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == state.COMPLETE:
            what = f"val balanced acc {trial.value:.4f}"
        elif trial.state == state.PRUNED:
            what = f"pruned after epoch {trial.user_attrs.get('epochs_trained', 0)}"
        else:
            what = f"failed ({trial.user_attrs.get('error', 'see the log')})"
        try:
            best = f"best {study_.best_value:.4f} (trial {study_.best_trial.number})"
        except ValueError:
            best = "no trial complete yet"
        log(f"trial {trial.number} [{done}/{trials}] {what}; {best}; {values}; {seconds / 60:.1f} min")
        write_outputs(study_, out, cfg, dims, epochs, sampler, pruner, url, trials, val_counts, data_line)

    remaining = trials - finished()
    caveat = proxy_caveat([d.key for d in dims], epochs, s1.epochs, pruner)
    if caveat and remaining > 0:
        log(f"lort tune: warning: {caveat}")
    if remaining > 0:
        log(
            f"lort tune: {remaining} of {trials} trials to run, each a {epochs}-epoch proxy of the "
            f"{s1.epochs}-epoch schedule (--proxy-epochs; --epochs sets the full one), sampler {sampler}, "
            f"pruner {pruner}; storage {url} (study {study_name!r})"
        )
        log(f"lort tune: data: {data_line}")
        study.optimize(
            objective,
            n_trials=2 * remaining,  # a cap for this process; failed trials do not count below
            timeout=timeout,
            catch=(LortError,),
            callbacks=[
                progress,
                optuna.study.MaxTrialsCallback(trials, states=(state.COMPLETE, state.PRUNED)),
            ],
            gc_after_trial=True,
        )
        log(f"lort tune: {time.monotonic() - started:.0f} s")
    return write_outputs(study, out, cfg, dims, epochs, sampler, pruner, url, trials, val_counts, data_line)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_rows(study) -> list[dict]:
    """One row per trial, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "val_balanced_acc": t.value,
                "epochs_trained": t.user_attrs.get("epochs_trained"),
                "last_reported": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
                "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                "params": dict(t.params),
                "folder": t.user_attrs.get("folder"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def score_resolution(score: float, val_counts: list[int]) -> dict:
    """How finely a validation split resolves a balanced accuracy near ``score``.

    ``standard_error``: the binomial standard error of one balanced accuracy, every class taken
    at ``score``'s accuracy (``sqrt(score (1 - score) sum_k 1/n_k) / K``); ``separation``: twice
    the standard error of the difference of two independent such scores (``2 sqrt(2) SE``), the
    gap below which two trials' scores are not told apart. Trials share the split, so the
    difference is often less noisy than this; it is the scale, not a test. ``one_image``: what
    one image of the smallest class moves the balanced accuracy by.
    """
    counts = [c for c in val_counts if c > 0]
    k = len(counts)
    se = math.sqrt(max(score * (1.0 - score), 0.0) * sum(1.0 / c for c in counts)) / k
    return {
        "images": int(sum(counts)),
        "classes": k,
        "min_per_class": int(min(counts)),
        "one_image": 1.0 / (k * min(counts)),
        "standard_error": se,
        "separation": 2.0 * math.sqrt(2.0) * se,
    }


def write_outputs(
    study,
    out: Path,
    cfg: RunConfig,
    dims,
    epochs,
    sampler,
    pruner,
    url,
    trials,
    val_counts: list[int] | None = None,
    data: str | None = None,
) -> dict:
    """``tune.json``, the trial tables, ``best.yaml`` and the report, from the study as it is now."""
    rows = trial_rows(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: (r["val_balanced_acc"], -r["number"])) if complete else None
    summary = {
        "study": study.study_name,
        "storage": url,
        "objective": "best validation balanced accuracy over the proxy schedule's epochs (test never read)",
        "space": {d.key: d.to_dict() for d in dims},
        "proxy_epochs": epochs,
        "full_epochs": cfg.stage1.epochs,
        "sampler": sampler,
        "pruner": pruner,
        "trials_requested": trials,
        **({"data": data} if data else {}),
        "trial_counts": counts,
        "caveat": proxy_caveat([d.key for d in dims], epochs, cfg.stage1.epochs, pruner),
        "best": None,
    }
    if best is not None:
        chosen = with_values(cfg, best["params"])
        header = (
            f"# lort tune: trial {best['number']} of study {study.study_name!r}, validation balanced accuracy "
            f"{best['val_balanced_acc']:.4f}\n# on the {epochs}-epoch proxy; the full {cfg.stage1.epochs}-epoch "
            "schedule below. Run it with: lort run best.yaml --out DIR\n"
        )
        write_text(out / "best.yaml", header + dump_yaml(chosen))
        summary["best"] = {
            "trial": best["number"],
            "val_balanced_acc": best["val_balanced_acc"],
            "params": best["params"],
            "config": "best.yaml",
        }
        if val_counts:
            res = score_resolution(best["val_balanced_acc"], val_counts)
            summary["best"]["resolution"] = res
            summary["best"]["not_separated_from"] = [
                r["number"]
                for r in complete
                if r["number"] != best["number"]
                and best["val_balanced_acc"] - r["val_balanced_acc"] < res["separation"]
            ]
    write_json(out / "trials.json", rows)
    buf = io.StringIO()
    keys = [d.key for d in dims]
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "val_balanced_acc", "epochs_trained", "duration_s", *keys, "error"])
    for r in rows:
        writer.writerow(
            [r["number"], r["state"], r["val_balanced_acc"], r["epochs_trained"], r["duration_s"]]
            + [r["params"].get(k) for k in keys]
            + [r["error"] or ""]
        )
    write_text(out / "trials.csv", buf.getvalue())
    write_json(out / "tune.json", summary)
    tune_report(out)
    return summary


def is_tune_folder(folder: str | Path) -> bool:
    return (Path(folder) / "tune.json").is_file() and (Path(folder) / "trials.json").is_file()


def tune_report(folder: str | Path) -> Path:
    """``report.md`` and ``figures/tune_history.png`` of a tune folder (``lort report`` calls it too)."""
    from ..analysis.plots import plot_tune_history

    folder = Path(folder)
    summary = json.loads((folder / "tune.json").read_text())
    rows = json.loads((folder / "trials.json").read_text())
    keys = list(summary["space"])
    figure = plot_tune_history(rows, summary["space"], folder / "figures" / "tune_history.png") if rows else None
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["trial_counts"].items())) or "none yet"
    here = summary["storage"] == default_storage(folder)
    storage = "study.db (SQLite) in this folder" if here else summary["storage"]
    lines = [
        "# lort tune",
        "",
        f"- Study {summary['study']!r} in {storage}: {counts} (of {summary['trials_requested']} requested).",
        f"- Objective: {summary['objective']}; {summary['proxy_epochs']}-epoch proxy of the "
        f"{summary['full_epochs']}-epoch schedule; sampler {summary['sampler']}, pruner {summary['pruner']}.",
        "- Space: " + "; ".join(f"{k} {_describe(v)}" for k, v in summary["space"].items()),
        *([f"- Data: {summary['data']}."] if summary.get("data") else []),
    ]
    if summary.get("caveat"):
        lines.append(f"- **Caveat**: {summary['caveat']}.")
    best = summary.get("best")
    if best:
        lines.append(
            f"- Best: trial {best['trial']}, validation balanced accuracy {best['val_balanced_acc']:.4f}, "
            + ", ".join(f"{k.split('.', 1)[1]}={format_value(v)}" for k, v in best["params"].items())
            + f"; full-schedule config in {best['config']} (`lort run {best['config']} --out DIR`)."
        )
        res, close = best.get("resolution"), best.get("not_separated_from", [])
        if res is None:  # a study written before lort recorded it: from the best trial's dataset.json
            res, close = _resolution_from_trials(folder, best, rows)
        if res:
            lines.append(
                f"- Resolution: the validation split holds {res['images']} images ({res['min_per_class']} in its "
                f"smallest class; one image there moves the score by {res['one_image']:.4f}); a score near the "
                f"best's has a standard error of about {res['standard_error']:.4f}, and two trials closer than "
                f"{res['separation']:.4f} are not told apart. "
                + (
                    f"Not separated from the best: trial{'s' if len(close) > 1 else ''} "
                    + ", ".join(map(str, close))
                    + " (a larger validation split, e.g. `data.val_per_class`, or more proxy epochs would be needed "
                    "to choose among them)."
                    if close
                    else "Every other completed trial is further below it than that."
                    if sum(r["state"] == "complete" for r in rows) > 1
                    else "No other trial completed, so the best was compared with none."
                )
            )
    lines += ["", "| trial | state | val balanced acc | epochs | minutes | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (5 + len(keys)))
    for r in sorted(rows, key=lambda r: -(r["val_balanced_acc"] or -1.0)):
        score = "–" if r["val_balanced_acc"] is None else f"{r['val_balanced_acc']:.4f}"
        minutes = "–" if r["duration_s"] is None else f"{r['duration_s'] / 60:.1f}"
        values = " | ".join(format_value(r["params"].get(k, "–")) for k in keys)
        lines.append(
            f"| {r['number']} | {r['state']} | {score} | {r['epochs_trained'] or '–'} | {minutes} | {values} |"
        )
    if figure is not None:
        lines += ["", f"![Study history: each trial's score and the best so far]({figure.relative_to(folder)})"]
    path = folder / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _resolution_from_trials(folder: Path, best: dict, rows: list[dict]) -> tuple[dict | None, list[int]]:
    row = next((r for r in rows if r["number"] == best["trial"]), None)
    try:
        counts = json.loads((folder / row["folder"] / "dataset.json").read_text())["val_counts"]
    except (TypeError, KeyError, OSError, ValueError):
        return None, []
    res = score_resolution(best["val_balanced_acc"], counts)
    close = [
        r["number"]
        for r in rows
        if r["state"] == "complete"
        and r["number"] != best["trial"]
        and best["val_balanced_acc"] - r["val_balanced_acc"] < res["separation"]
    ]
    return res, close


def _describe(spec: dict) -> str:
    if "choices" in spec:
        return "in {" + ", ".join(map(str, spec["choices"])) + "}"
    kind = "log-uniform" if spec.get("log") else "uniform"
    return f"{kind} [{format_value(spec['low'])}, {format_value(spec['high'])}]" + (
        " (integers)" if spec.get("int") else ""
    )
