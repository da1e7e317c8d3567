"""Run configuration: nested dataclasses loaded from YAML with ``key=value`` overrides.

Unknown keys, values of the wrong type and impossible values are errors naming the key
(and the file), never silently ignored. The resolved configuration is saved beside
every output.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.config import DataConfig
from .data.policies import AUGMENT_POLICIES, MAX_MAGNITUDE
from .errors import LortError
from .runtime.compilation import valid_compile_setting
from .runtime.precision import AMP_MODES
from .stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, DEFAULT_SEEDS, Schedule, check_comparison, check_lrs

LR_SCHEDULES = ("cosine", "step")
# stage-1 keys a resumed run may change: speed settings and the test trace leave the training as it is
TRAINS_THE_SAME = ("workers", "compile", "test_trace")
STAGE2_CHECKPOINTS = ("last", "best")  # last.pt (the end of the schedule) or best.pt (stage 1's best validation epoch)


@dataclass
class Stage1Config:
    model: str = "resnet32"  # a registered backbone: resnet32, resnet34_cifar, resnet50, resnext50_32x4d
    epochs: int = 200  # the standard CIFAR-LT schedule
    batch_size: int = 64
    lr: float = 0.01  # the weight-balancing recipe (tuned for CIFAR-100-LT, ResNet-34)
    momentum: float = 0.9
    weight_decay: float = 5e-3  # the recipe's tuned weight decay
    warmup_epochs: int = 0  # linear warm-up before the schedule
    lr_schedule: str = "cosine"  # cosine (to zero) | step (lr times lr_decay at each of lr_milestones)
    lr_milestones: list[int] = field(default_factory=list)  # step schedule: decay after these epochs
    lr_decay: float = 0.1  # factor of a step schedule at each milestone (LDAM-DRW's code: 160, 180 and 0.01)
    max_norm: float | None = None  # per-class classifier weight-norm bound after each step
    augment: str = "standard"  # standard (pad-4 crop + flip) | randaugment (Cubuk et al. 2020) | autoaugment (CIFAR-10 policy, Cubuk et al. 2019)
    randaugment_ops: int = 2  # RandAugment N: operations per image
    randaugment_magnitude: int = 9  # RandAugment M, on the 0-30 scale of the paper
    cutout: int = 0  # Cutout square side in pixels, after the policy (DeVries & Taylor 2017); 0 = off
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha) (Zhang et al. 2018; MiSLAS's stage 1 uses 1.0); 0 = off
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha) (Yun et al. 2019); 0 = off
    mix_prob: float = 1.0  # fraction of batches mixed; with both mixup and CutMix each mixed batch picks one
    label_smoothing: float = 0.0  # stage-1 cross-entropy label smoothing (Szegedy et al. 2016)
    amp: str = "auto"  # none | auto (bf16 where native: AMX or AVX512_BF16 CPUs, Ampere+ GPUs) | bf16 | fp16 (GPU)
    channels_last: bool = True  # memory format of the convolutions (faster on CPUs and tensor cores)
    compile: bool | str = "auto"  # auto (CPU with a C++ compiler, runs of 10,000+ steps) | true | false
    deterministic: bool = True  # deterministic algorithms (the same weights from the same seed on a CPU)
    seed: int = 0  # seed of initialisation, batch order and augmentation
    workers: int = 4  # DataLoader workers for large (streamed) images
    eval_every: int = 1  # epochs between validation passes
    test_trace: bool = False  # information only: test accuracy after every epoch (metrics.jsonl), never used to choose
    steps_per_epoch: int | None = None  # cap, for quick tests and smoke runs
    eval_batch_size: int = 512  # batch size of evaluation and feature extraction


@dataclass
class Stage2Config:
    methods: list[str] = field(default_factory=lambda: ["all"])  # names from `lort methods`, or all
    params: dict = field(default_factory=dict)  # {method: {hyperparameter: value or list to search}}
    checkpoint: str = "last"  # stage-1 checkpoint of the features: last | best (best validation epoch)
    views: int = 1  # training views in the feature cache (1 = plain images)
    epochs: int = Schedule.epochs  # re-training epochs (validation after each)
    batch_size: int = Schedule.batch_size  # re-training batch size
    momentum: float = Schedule.momentum  # SGD momentum
    weight_decay: float = Schedule.weight_decay  # weight decay of methods that set none of their own
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))  # searched on validation
    seed: int = Schedule.seed  # first stage-2 seed (batch order, re-initialised heads)
    seeds: int = DEFAULT_SEEDS  # stage 2 repeated with this many seeds (mean, sd, bootstrap intervals)
    budget: int | None = DEFAULT_FITS_PER_METHOD  # fits per method, the same for all; none: every method's whole grid
    tta_flip: bool = False  # test-time flip averaging of val/test features (reported when on)
    sweep: bool = True  # the smoothing sweep and the lr x weight-decay grid of the report

    def schedule(self) -> Schedule:
        """The re-training schedule of this section (the first learning rate as its lr)."""
        schedule, _ = Schedule.searching(
            self.lrs,
            epochs=self.epochs,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        return schedule


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except LortError:
                continue
        raise LortError(f"config key {key}: {value!r} is not a {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):  # "a,b,c"; numbers in it are read as YAML reads them
            value = [v.strip() if inner is str else yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise LortError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LortError(f"config key {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LortError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LortError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise LortError(f"config key {key}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise LortError(f"config key {key}: expected a mapping such as {{lort: {{smooth: 0.98}}}}, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict, prefix: str, where: str) -> Any:
    if not isinstance(values, dict):
        raise LortError(f"{where}: section {prefix.rstrip('.') or '(top)'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise LortError(f"{where}: unknown config key {prefix}{key}; known keys: {', '.join(sorted(names))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.", where)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise LortError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``stage1.lr=0.1`` -> ``("stage1.lr", 0.1)``; the value is parsed as YAML."""
    if "=" not in text:
        raise LortError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content; a missing file or bad YAML is one error naming the file (and line)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LortError(f"{path}: no such {what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise LortError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Load a YAML file (or defaults), apply overrides, validate, return a :class:`RunConfig`."""
    tree: dict = {}
    where = "command line"
    if path is not None:
        where = str(path)
        tree = read_yaml(path, "config file") or {}
        if not isinstance(tree, dict):
            raise LortError(f"{path}: a config file must be a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_path(tree, key, value)
    cfg = _build(RunConfig, tree, "", where)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    from .models.registry import model_input_size

    s1 = cfg.stage1
    model_input_size(s1.model)  # unknown model names fail here, before any data is read
    check_lrs([s1.lr], "stage1.lr")
    check_lrs(cfg.stage2.lrs, "stage2.lrs")
    check_comparison(cfg.stage2.budget, cfg.stage2.seeds)
    cfg.stage2.schedule()  # its checks
    checks = [
        (s1.epochs >= 1, f"stage1.epochs must be >= 1, got {s1.epochs}"),
        (s1.batch_size >= 1, f"stage1.batch_size must be >= 1, got {s1.batch_size}"),
        (s1.weight_decay >= 0, f"stage1.weight_decay must be >= 0, got {s1.weight_decay}"),
        (0 <= s1.momentum < 1, f"stage1.momentum must lie in [0, 1), got {s1.momentum}"),
        (
            0 <= s1.warmup_epochs < s1.epochs,
            f"stage1.warmup_epochs must lie in [0, epochs), got {s1.warmup_epochs}",
        ),
        (
            s1.lr_schedule in LR_SCHEDULES,
            f"stage1.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {s1.lr_schedule!r}",
        ),
        (
            s1.lr_schedule == "step" or not s1.lr_milestones,
            f"stage1.lr_milestones {s1.lr_milestones} are read by lr_schedule step only (now {s1.lr_schedule!r})",
        ),
        (
            s1.lr_schedule != "step" or bool(s1.lr_milestones),
            "stage1.lr_schedule step needs stage1.lr_milestones (epochs, e.g. 160,180)",
        ),
        (
            all(0 < m < s1.epochs for m in s1.lr_milestones)
            and all(a < b for a, b in zip(s1.lr_milestones, s1.lr_milestones[1:], strict=False)),
            f"stage1.lr_milestones must be increasing epochs in (0, {s1.epochs}), got {s1.lr_milestones}",
        ),
        (0 < s1.lr_decay <= 1, f"stage1.lr_decay must lie in (0, 1], got {s1.lr_decay}"),
        (s1.max_norm is None or s1.max_norm > 0, f"stage1.max_norm must be > 0, got {s1.max_norm}"),
        (
            s1.augment in AUGMENT_POLICIES,
            f"stage1.augment must be one of {', '.join(AUGMENT_POLICIES)}, got {s1.augment!r}",
        ),
        (s1.randaugment_ops >= 1, f"stage1.randaugment_ops must be >= 1, got {s1.randaugment_ops}"),
        (
            0 <= s1.randaugment_magnitude <= MAX_MAGNITUDE,
            f"stage1.randaugment_magnitude must lie in [0, {MAX_MAGNITUDE}], got {s1.randaugment_magnitude}",
        ),
        (s1.cutout >= 0, f"stage1.cutout must be >= 0, got {s1.cutout}"),
        (s1.mixup_alpha >= 0, f"stage1.mixup_alpha must be >= 0, got {s1.mixup_alpha}"),
        (s1.cutmix_alpha >= 0, f"stage1.cutmix_alpha must be >= 0, got {s1.cutmix_alpha}"),
        (0 <= s1.mix_prob <= 1, f"stage1.mix_prob must lie in [0, 1], got {s1.mix_prob}"),
        (
            0 <= s1.label_smoothing < 1,
            f"stage1.label_smoothing must lie in [0, 1), got {s1.label_smoothing}",
        ),
        (s1.amp in AMP_MODES, f"stage1.amp must be one of {', '.join(AMP_MODES)}, got {s1.amp!r}"),
        (
            valid_compile_setting(s1.compile),
            f"stage1.compile must be auto, true or false, got {s1.compile!r}",
        ),
        (
            s1.steps_per_epoch is None or s1.steps_per_epoch >= 1,
            "stage1.steps_per_epoch must be >= 1",
        ),
        (
            cfg.data.imbalance_ratio >= 1,
            f"data.imbalance_ratio must be >= 1, got {cfg.data.imbalance_ratio}",
        ),
        (cfg.stage2.views >= 1, f"stage2.views must be >= 1, got {cfg.stage2.views}"),
        (
            cfg.stage2.checkpoint in STAGE2_CHECKPOINTS,
            f"stage2.checkpoint must be one of {', '.join(STAGE2_CHECKPOINTS)}, got {cfg.stage2.checkpoint!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise LortError(message)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_default(section: str, key: str) -> Any:
    """The default of ``section.key`` in a fresh :class:`RunConfig` (None if no such key)."""
    return getattr(getattr(RunConfig(), section, None), key, None)


def config_differences(
    recorded: dict, cfg: RunConfig, sections: tuple[str, ...] = ("data", "stage1", "stage2"), ignore=()
) -> list[tuple[str, Any, Any]]:
    """``(section.key, recorded value, cfg's value)`` for each key of ``sections`` where the
    config ``recorded`` (a dict, e.g. from a checkpoint) and ``cfg`` disagree. A key the
    record lacks (added to lort after it was made) agrees when ``cfg`` leaves it at its default."""
    now, out = to_dict(cfg), []
    for section in sections:
        saved = recorded.get(section) or {}
        for key, value in now[section].items():
            if key in ignore or (key not in saved and value == field_default(section, key)):
                continue
            if saved.get(key) != value:
                out.append((f"{section}.{key}", saved.get(key), value))
    return out


def resumable_differences(path: Path, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """What keeps ``cfg`` from continuing the run whose config file is ``path``: the keys that
    differ but for those in ``TRAINS_THE_SAME`` (a file that no longer loads differs as a whole)."""
    if same_config(path, cfg):
        return []
    try:
        recorded = to_dict(load_config(path))
    except LortError as exc:
        return [("config", str(exc), "this version of lort")]
    return config_differences(recorded, cfg, ignore=TRAINS_THE_SAME)


def same_config(path: Path, cfg: RunConfig) -> bool:
    """The config file at ``path`` is ``cfg``: the same text, or one written before keys were
    added that ``cfg`` leaves at their defaults (it loads to the same values)."""
    if path.read_text() == dump_yaml(cfg):
        return True
    try:
        return to_dict(load_config(path)) == to_dict(cfg)
    except LortError:  # a key that no longer exists, or a value no longer valid
        return False
