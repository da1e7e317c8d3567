"""Stage-2 methods: each a small object that plugs pieces into the one training loop.

A method says which head it trains (and how it is initialised), which loss, which
sampler, whether MaxNorm applies, which post-hoc transform follows, and which
hyperparameters are searched on the validation split. Register new ones with
:func:`register_method`.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import LortError
from . import losses as L
from .heads import CentredHead, CosineHead, Head, LinearHead, LWSHead, discriminant_directions
from .params import Param
from .trainer import LossFn


@dataclass
class FitContext:
    """What a method may look at: training features and labels, class counts, the
    stage-1 classifier. Never validation or test labels."""

    x: torch.Tensor
    y: torch.Tensor
    counts: np.ndarray
    init_weight: torch.Tensor
    init_bias: torch.Tensor
    epochs: int
    seed: int = 0
    given_classifier: bool = True  # init_weight came with the features (else it was fitted from zero here)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @functools.cached_property
    def class_directions(self) -> torch.Tensor:
        """``(K, D)``: the class directions LORT's centred head starts from: the given
        classifier's, else (features without one) those of a shared-covariance Gaussian
        model of the classes (:func:`lort.stage2.heads.discriminant_directions`), computed
        once. See results/lort_default/ for why not the classifier fitted from zero."""
        if self.given_classifier:
            return self.init_weight
        return discriminant_directions(self.x, self.y, self.num_classes)

    @property
    def device(self) -> torch.device:
        """Where the features live; every tensor a method builds goes there."""
        return self.x.device

    def tensor(self, values) -> torch.Tensor:
        """``values`` (a list, array or CPU tensor) as a float32 tensor on :attr:`device`."""
        return torch.as_tensor(values, dtype=torch.float32, device=self.device)


class Method:
    name = ""
    title = ""
    source = ""
    sampler = "natural"
    trains = True
    head_class: type[Head] = LinearHead  # the kind of head build_head returns (fusion groups by it)
    params: tuple[Param, ...] = ()  # the method's hyperparameters, declared once (see lort.stage2.params)
    deviations: tuple[str, ...] = ()  # every way lort's version differs from its source
    variant_of: str | None = None  # another method this one only varies (counted once)
    probabilities: bool = True  # whether softmax of its logits is meant as probabilities (ECE)

    def same_as(self, hp: dict[str, Any]) -> str | None:
        """The name of another method that is the same algorithm at setting ``hp``, if any."""
        return None

    @property
    def grid(self) -> dict[str, list]:
        """The values each hyperparameter takes in a validation search."""
        return {p.name: list(p.grid) for p in self.params if p.grid}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.params) or "none"
        raise LortError(f"method {self.name} has no hyperparameter {name!r} (its hyperparameters: {names})")

    def has_param(self, name: str) -> bool:
        return any(p.name == name for p in self.params)

    def fixed_values(self, fixed: dict[str, Any] | None) -> dict[str, list]:
        """``fixed`` ({name: value or list of values}) checked against the declarations."""
        return {name: self.param(name).values(value, f"method {self.name}") for name, value in (fixed or {}).items()}

    def settings(self, fixed: dict[str, Any] | None = None, search: bool = True) -> list[dict[str, Any]]:
        """The hyperparameter settings to train: every combination of each parameter's
        values — those ``fixed`` here (a value or a list), else its grid when ``search``
        (there is validation data to choose on), else its default."""
        values = self.fixed_values(fixed)
        for p in self.params:
            if p.name not in values:
                if search and p.grid:
                    values[p.name] = list(p.grid)
                elif p.default is not None:
                    values[p.name] = [p.default]
        keys = list(values)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(values[k] for k in keys))]

    # Each piece receives the list of G hyperparameter settings trained side by side.

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return LinearHead(ctx.init_weight, ctx.init_bias, len(hps))

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        return L.SoftCrossEntropy(len(hps), ctx.num_classes, device=ctx.device)

    def max_norm(self, ctx: FitContext, hps: list[dict]) -> list[float] | None:
        return None

    def weight_decay(self, hps: list[dict]) -> list[float] | None:
        return None

    def posthoc(self, head: Head, ctx: FitContext, hp: dict) -> Head:
        """Applied to a single trained (or untrained) classifier before evaluation."""
        return head

    def choice_note(self, epoch: int | None, epochs: int) -> str | None:
        """What a leaderboard row must say about the epoch chosen on validation (e.g. that
        it came before a phase of the method's schedule), or None."""
        return None

    def describe(self) -> str:
        params = "; ".join(p.describe() for p in self.params) or "none"
        text = f"{self.title} — {self.source}. Sampler: {self.sampler}. Hyperparameters: {params}."
        if self.variant_of:
            text += f" A variant of {self.variant_of} (counted once)."
        deviations = "; ".join(self.deviations) or "none known"
        return f"{text} Deviations from the source: {deviations}."


METHODS: dict[str, Method] = {}
TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # post-hoc tau values searched on validation


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls()
    cls.__doc__ = METHODS[cls.name].describe()  # source, hyperparameters and deviations, in help() too
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LortError(f"unknown stage-2 method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def resolve_methods(names: list[str]) -> list[Method]:
    if not names or names == ["all"]:
        return list(METHODS.values())
    return [get_method(n) for n in names]


def _reinit(ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(ctx.seed)  # drawn on the CPU: the same weights on every device
    k, d = ctx.init_weight.shape
    bound = 1.0 / d**0.5
    w = (torch.rand(k, d, generator=gen, device="cpu") * 2 - 1) * bound
    b = (torch.rand(k, generator=gen, device="cpu") * 2 - 1) * bound
    return ctx.tensor(w), ctx.tensor(b)


def drw_start(epochs: int) -> int:
    """The epoch (0-based) from which LDAM-DRW re-weights: the last 20% of training, as the
    source's 160 of 200 epochs."""
    return int(0.8 * epochs)


# ----------------------------------------------------------------------------- the methods


@register_method
class CERetraining(Method):
    name = "ce"
    title = "CE re-training"
    source = "plain cross-entropy, natural sampling, warm start from the stage-1 classifier"
    deviations = (
        "no single source: the common re-training baseline",
        "the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation)",
    )


@register_method
class LORT(Method):
    name = "lort"
    title = "LORT (logits retargeting), centred equal-norm head"
    source = (
        "Lu et al., Rethinking Classifier Re-Training in Long-Tailed Recognition: A Simple Logits Retargeting "
        "Approach (ICLR 2025): cross-entropy against (1 - s) * onehot + s / K, no class counts. lort's default "
        "trains it on a head that cannot store the class prior: class directions from the stage-1 classifier at "
        "unit norm (features without a classifier: a shared-covariance Gaussian model's, equal priors), features "
        "centred on their training mean and scaled by their spread, one learned logit scale, no bias (see "
        "results/lort_default/)"
    )
    params = (L.SMOOTH, L.TARGET_RATIO)
    head_class = CentredHead
    deviations = (
        "the head: the paper re-trains the plain linear classifier (weights and bias); that recipe is lort_reference",
        "the shared re-training schedule (SGD, momentum 0.9, cosine, learning rate searched like every method)",
    )

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return CentredHead.from_classifier(ctx.class_directions, ctx.x, len(hps))

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        k = ctx.num_classes
        smooth = ctx.tensor([self.smooth_value(hp, k) for hp in hps]).view(-1, 1).expand(len(hps), k)
        return L.SoftCrossEntropy(len(hps), k, smoothing=smooth, device=ctx.device)

    def settings(self, fixed: dict[str, Any] | None = None, search: bool = True) -> list[dict[str, Any]]:
        """``smooth`` values, or — given ``target_ratio`` values — the K-independent ratios."""
        if fixed and fixed.get("target_ratio") is not None:
            if fixed.get("smooth") is not None:
                raise LortError(f"method {self.name}: give smooth or target_ratio, not both")
            return [
                {"target_ratio": r} for r in self.fixed_values({"target_ratio": fixed["target_ratio"]})["target_ratio"]
            ]
        return super().settings({k: v for k, v in (fixed or {}).items() if k != "target_ratio"}, search)

    @staticmethod
    def smooth_value(hp: dict, num_classes: int) -> float:
        if hp.get("target_ratio") is not None:
            return L.smooth_from_ratio(hp["target_ratio"], num_classes)
        return L.check_smooth(hp["smooth"])


@register_method
class LORTReference(LORT):
    name = "lort_reference"
    title = "LORT, the paper's recipe"
    source = (
        "Lu et al. (ICLR 2025) as published: LORT's target on the plain linear classifier (weights and bias), "
        "warm-started from the stage-1 classifier"
    )
    head_class = LinearHead
    variant_of = "lort"
    deviations = (
        "the reference code's stage 2 trains with its own schedule; lort uses the shared re-training schedule",
    )

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return LinearHead(ctx.init_weight, ctx.init_bias, len(hps))


@register_method
class LORTBalanced(LORTReference):
    name = "lort_balanced"
    title = "LORT + class-balanced sampling"
    source = "LORT's target on the plain linear classifier with cRT's class-balanced sampler"
    sampler = "balanced"
    variant_of = "lort"
    deviations = (
        "not in the LORT paper: the paper's recipe with class-balanced sampling",
        "the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation)",
    )


@register_method
class CRT(Method):
    name = "crt"
    title = "cRT"
    source = "Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition (ICLR 2020)"
    sampler = "balanced"
    deviations = ("source: 10 epochs of its own schedule; lort: the shared re-training schedule",)

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return LinearHead(*_reinit(ctx), len(hps))


@register_method
class LWS(Method):
    name = "lws"
    title = "LWS (learnable weight scaling)"
    source = "Kang et al. (ICLR 2020): logits (W x + b) scaled per class by f_k, only f trained"
    sampler = "balanced"
    head_class = LWSHead
    deviations = ("the shared re-training schedule instead of the source's",)

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return LWSHead(ctx.init_weight, ctx.init_bias, len(hps))


@register_method
class TauNorm(Method):
    name = "tau_norm"
    title = "tau-normalisation"
    source = "Kang et al. (ICLR 2020): W_k / ||W_k||^tau, bias dropped, no training"
    trains = False
    params = (Param("tau", default=1.0, source_default=1.0, grid=TAU_GRID, low=0.0, doc="W_k / ||W_k||^tau"),)
    deviations = ("none: no training",)

    def posthoc(self, head: Head, ctx: FitContext, hp: dict) -> Head:
        w = ctx.init_weight
        norms = w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return LinearHead(w / norms ** hp["tau"], w.new_zeros(len(w)))


@register_method
class WeightBalancing(Method):
    name = "wb"
    title = "Weight balancing (stage 2)"
    source = (
        "Alshammari et al., Long-Tailed Recognition via Weight Balancing (CVPR 2022), stage 2 as its public "
        "code runs it: class-balanced loss (softmax probabilities, binary cross-entropy against the one-hot "
        f"label, per-sample effective-number weights, beta {L.EFFECTIVE_NUMBER_BETA:g}, weights summing to K), weight decay 0.1 on "
        "weight and bias, MaxNorm on the class weights with the bound min + thresh x (max - min) of the "
        "stage-1 class-weight norms, thresh 0.1"
    )
    params = (
        Param("weight_decay", default=0.1, source_default=0.1, grid=(0.01, 0.05, 0.1, 0.2), low=0.0),
        Param(
            "thresh",
            default=0.1,
            source_default=0.1,
            grid=(0.1, 0.3),
            low=0.0,
            doc="MaxNorm bound = min + thresh x (max - min) of the stage-1 class-weight norms",
        ),
    )
    deviations = (
        "the shared re-training schedule: learning rate searched like every method (source: 0.01), the shared number "
        "of epochs (source: 10)",
        "weight decay and the MaxNorm threshold searched on validation over their grids (source: fixed at 0.1 and 0.1)",
    )

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        return L.CBSoftmaxBCE(ctx.tensor(L.effective_number_weights(ctx.counts)))

    def weight_decay(self, hps: list[dict]) -> list[float]:
        return [hp["weight_decay"] for hp in hps]

    def max_norm(self, ctx: FitContext, hps: list[dict]) -> list[float]:
        norms = ctx.init_weight.norm(dim=1)
        low, high = float(norms.min()), float(norms.max())
        return [low + hp["thresh"] * (high - low) for hp in hps]


@register_method
class BalancedSoftmax(Method):
    name = "balanced_softmax"
    title = "Balanced Softmax"
    source = "Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition (NeurIPS 2020): cross-entropy of logits + log prior"
    deviations = (
        "Balanced Softmax alone, without the meta-sampler",
        "the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation)",
    )

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        prior = ctx.tensor(L.log_prior(ctx.counts))
        return L.SoftCrossEntropy(len(hps), ctx.num_classes, offset=prior, device=ctx.device)


@register_method
class LogitAdjustedLoss(Method):
    name = "la_loss"
    title = "Logit-adjusted loss"
    source = "Menon et al., Long-Tail Learning via Logit Adjustment (ICLR 2021)"
    params = (
        Param("tau", default=1.0, source_default=1.0, grid=(1.0, 1.5, 2.0), low=0.0, doc="scale of the log prior"),
    )
    deviations = ("none in the loss; the shared re-training schedule",)

    def same_as(self, hp: dict[str, Any]) -> str | None:
        return "balanced_softmax" if hp.get("tau") == 1.0 else None

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        tau = ctx.tensor([hp["tau"] for hp in hps]).view(-1, 1)
        prior = ctx.tensor(L.log_prior(ctx.counts)) * tau
        return L.SoftCrossEntropy(len(hps), ctx.num_classes, offset=prior, device=ctx.device)


@register_method
class LogitAdjustmentPosthoc(Method):
    name = "la_posthoc"
    title = "Post-hoc logit adjustment"
    source = "Menon et al. (ICLR 2021): stage-1 logits minus tau * log prior, no training"
    trains = False
    params = (Param("tau", default=1.0, source_default=1.0, grid=TAU_GRID, low=0.0, doc="scale of the log prior"),)
    deviations = ("none: no training",)

    def posthoc(self, head: Head, ctx: FitContext, hp: dict) -> Head:
        return LinearHead(ctx.init_weight, ctx.init_bias - hp["tau"] * ctx.tensor(L.log_prior(ctx.counts)))


@register_method
class LabelAwareSmoothing(Method):
    name = "mislas"
    title = "Label-aware smoothing (MiSLAS)"
    source = (
        "Zhong et al., Improving Calibration for Long-Tailed Recognition (CVPR 2021): per-class "
        "smoothing from head to tail, class-balanced sampling (no BN shift on cached features)"
    )
    sampler = "balanced"
    deviations = (
        "no shift learning on BatchNorm (the features are cached)",
        "no learnable weight scaling of the source's stage 2: the classifier is re-trained directly",
        "the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation) instead of the source's stage-2 schedule",
        "the head-to-tail smoothing searched over two pairs, (0.3, 0.0) and (0.4, 0.1)",
    )
    params = (
        Param(
            "smooth_head_tail",
            default=(0.3, 0.0),
            source_default=(0.3, 0.0),
            grid=((0.3, 0.0), (0.4, 0.1)),
            kind=tuple,
            low=0.0,
            high=1.0,
            high_open=True,
            doc="smoothing of the largest and of the smallest class (source: CIFAR-10 (0.3, 0.0), CIFAR-100 (0.4, 0.1))",
        ),
    )

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        eps = ctx.tensor(torch.stack([L.label_aware_smoothing(ctx.counts, *hp["smooth_head_tail"]) for hp in hps]))
        return L.SoftCrossEntropy(len(hps), ctx.num_classes, smoothing=eps, device=ctx.device)


@register_method
class ClassBalancedReweighting(Method):
    name = "cb_reweight"
    title = "Class-balanced re-weighting"
    source = (
        "Cui et al., Class-Balanced Loss Based on Effective Number of Samples (CVPR 2019): softmax cross-entropy, "
        "sample weights (1 - beta) / (1 - beta^n_y) summing to K over classes, loss averaged over the batch"
    )
    deviations = (
        "the softmax form only (the source also has sigmoid and focal forms)",
        "a classifier re-trained on frozen features with the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation) (the source trains the whole network)",
    )
    params = (
        Param(
            "beta",
            default=L.EFFECTIVE_NUMBER_BETA,
            source_default=L.EFFECTIVE_NUMBER_BETA,
            grid=(0.999, L.EFFECTIVE_NUMBER_BETA),
            low=0.0,
            high=1.0,
            high_open=True,
        ),
    )

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        w = ctx.tensor(torch.stack([L.effective_number_weights(ctx.counts, hp["beta"]) for hp in hps]))
        return L.SoftCrossEntropy(len(hps), ctx.num_classes, class_weight=w, by_batch=True, device=ctx.device)


@register_method
class Focal(Method):
    name = "focal"
    title = "Focal loss"
    source = "Lin et al., Focal Loss for Dense Object Detection (ICCV 2017): -(1 - p_y)^gamma log p_y"
    deviations = (
        "softmax form for classification (the source's detector uses sigmoids and an alpha weight)",
        "a classifier re-trained on frozen features with the shared re-training schedule (SGD, momentum 0.9, cosine, the learning rate and the epoch chosen on validation) (the source trains the whole network)",
    )
    params = (Param("gamma", default=2.0, source_default=2.0, grid=(1.0, 2.0), low=0.0),)

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        return L.FocalLoss(ctx.tensor([hp["gamma"] for hp in hps]))


LDAM_SCALE = 30.0  # the source's cosine-classifier scale s


@register_method
class LDAMDRW(Method):
    name = "ldam_drw"
    title = "LDAM-DRW"
    source = (
        "Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss (NeurIPS 2019): "
        f"cosine classifier (scale {LDAM_SCALE:g}) from the stage-1 directions, margins up to 0.5, "
        f"effective-number re-weighting (beta {L.EFFECTIVE_NUMBER_BETA:g}) over the last 20% of epochs "
        "(the source: from epoch 160 of 200)"
    )
    deviations = (
        "re-trains the classifier only, from the stage-1 directions (the source trains end to end)",
        "the shared re-training schedule: re-weighting over the last 20% of its epochs (source: from epoch 160 of 200, "
        "lr 0.1 with a warm-up); the epoch is chosen on validation, and a row whose epoch precedes the re-weighting "
        "says so (LDAM without DRW)",
    )

    head_class = CosineHead

    def build_head(self, ctx: FitContext, hps: list[dict]) -> Head:
        return CosineHead(ctx.init_weight, scale=LDAM_SCALE, groups=len(hps))

    def choice_note(self, epoch: int | None, epochs: int) -> str | None:
        start = drw_start(epochs) + 1  # the first epoch trained with the re-weighting
        if epoch is not None and epoch < start:
            return f"epoch {epoch} chosen before the re-weighting phase (epochs {start}-{epochs}): LDAM without DRW"
        return None

    def loss(self, ctx: FitContext, hps: list[dict]) -> LossFn:
        return L.SoftCrossEntropy(
            len(hps),
            ctx.num_classes,
            margin=ctx.tensor(L.ldam_margins(ctx.counts)) * LDAM_SCALE,  # margins in units of the scaled logits
            class_weight=ctx.tensor(L.effective_number_weights(ctx.counts)),
            reweight_from=drw_start(ctx.epochs),
            device=ctx.device,
        )


@register_method
class NearestClassMean(Method):
    name = "ncm"
    title = "Nearest class mean"
    source = "Kang et al. (ICLR 2020): cosine similarity to each class's mean training feature"
    trains = False
    probabilities = False  # cosine similarities: no calibration is reported
    deviations = ("cosine similarity only (the source also reports Euclidean distance)",)

    def posthoc(self, head: Head, ctx: FitContext, hp: dict) -> Head:
        sums = ctx.x.new_zeros(ctx.num_classes, ctx.x.shape[1]).index_add_(0, ctx.y, ctx.x)
        return CosineHead(sums / ctx.tensor(ctx.counts)[:, None], 1.0, trainable=False)
