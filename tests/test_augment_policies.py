"""The batched RandAugment / AutoAugment operations against Pillow's, and mixup / CutMix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from lort.config import load_config
from lort.data.augment import BatchAugment, BatchMix, cutout_mask, iterate_batches
from lort.data.policies import CIFAR10_POLICY, OPS, BatchPolicy, apply_op
from lort.errors import LortError
from lort.stage1.train import mixed_loss


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    base[0] = (base[0] // 4) + 60  # a low-contrast image, where AutoContrast and Equalize matter
    return base


def _ours(name, images, level):
    x = torch.from_numpy(images).float()
    return apply_op(name, x, torch.full((len(images),), float(level))).numpy()


PIL_ORACLES = {
    "Equalize": (0.0, lambda im: ImageOps.equalize(im)),
    "AutoContrast": (0.0, lambda im: ImageOps.autocontrast(im)),
    "Invert": (0.0, lambda im: ImageOps.invert(im)),
    "Solarize": (0.5, lambda im: ImageOps.solarize(im, 127.5)),
    "Posterize": (0.5, lambda im: ImageOps.posterize(im, 6)),
    "Brightness": (0.5, lambda im: ImageEnhance.Brightness(im).enhance(1.45)),
    "Color": (-0.5, lambda im: ImageEnhance.Color(im).enhance(0.55)),
    "Contrast": (0.5, lambda im: ImageEnhance.Contrast(im).enhance(1.45)),
    "Sharpness": (0.5, lambda im: ImageEnhance.Sharpness(im).enhance(1.45)),
}


@pytest.mark.parametrize("name", sorted(PIL_ORACLES))
def test_pixel_operations_match_pillow(name):
    level, oracle = PIL_ORACLES[name]
    images = _images()
    ours = _ours(name, images, level)
    want = np.stack([np.asarray(oracle(Image.fromarray(im))) for im in images]).astype(np.float32)
    # float against Pillow's fixed point: a rare pixel may differ by one grey level, never more
    assert np.abs(ours - want).max() <= 1.0, name
    assert (ours == want).mean() > 0.99, name


def test_geometric_operations_move_pixels_as_pillow_does():
    images = _images(2)
    # translation by a whole number of pixels: the content moves right, grey 128 fills the gap
    px = 5
    level = px / (32 * 150.0 / 331.0)
    ours = _ours("TranslateX", images, level)  # a positive level moves the content right
    want = np.stack(
        [
            np.asarray(
                Image.fromarray(im).transform((32, 32), Image.AFFINE, (1, 0, -px, 0, 1, 0), fillcolor=(128,) * 3)
            )
            for im in images
        ]
    )
    assert np.array_equal(ours, want.astype(np.float32))
    rotated = _ours("Rotate", images, 0.0)
    assert np.array_equal(rotated, images.astype(np.float32))  # rotation by 0 is the identity


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policies_keep_shape_and_range_and_are_seeded(policy):
    x = torch.from_numpy(_images(64)).float()
    p = BatchPolicy(policy, ops=2, magnitude=9)
    a = p(x.clone(), torch.Generator().manual_seed(3))
    b = p(x.clone(), torch.Generator().manual_seed(3))
    c = p(x.clone(), torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert torch.equal(a, a.round())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).float().mean() > 0.5  # most images changed


def test_autoaugment_draws_the_cifar10_table_with_its_probabilities():
    p = BatchPolicy("autoaugment")
    n = 20000
    slots = p.draw(n, torch.Generator().manual_seed(0))
    first, _ = slots[0]
    # the first slot applies with the table's mean probability (sub-policies drawn uniformly)
    expected = np.mean([sub[0][1] for sub in CIFAR10_POLICY])
    assert abs((first >= 0).float().mean().item() - expected) < 0.02
    assert set((first[first >= 0]).tolist()) <= {OPS.index(sub[0][0]) for sub in CIFAR10_POLICY}


def test_cutout_masks_one_square_per_image():
    m = cutout_mask(500, 32, 32, 8, torch.Generator().manual_seed(0))
    zeros = (m == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # a full 8x8 square, or one clipped by the border
    x = BatchAugment(cutout=8)(torch.from_numpy(_images(4)), torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32)


def test_mixup_and_cutmix_mix_the_batch_with_beta_lambdas():
    x = torch.randn(32, 3, 8, 8)
    y = torch.arange(32)
    mix = BatchMix(mixup_alpha=1.0)
    rng = np.random.default_rng(0)
    lams = []
    for _ in range(400):
        mixed, partner, lam = mix(x, y, rng)
        lams.append(lam)
    assert abs(np.mean(lams) - 0.5) < 0.05 and abs(np.var(lams) - 1 / 12) < 0.02  # Beta(1, 1) is uniform
    mixed, partner, lam = mix(x, y, np.random.default_rng(1))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner], atol=1e-6)  # labels index their own images here
    cut = BatchMix(cutmix_alpha=1.0)
    mixed, partner, lam = cut(x, y, np.random.default_rng(2))
    from_self = (mixed == x).all(1).float().mean().item()
    assert abs(from_self - lam) < 1e-6  # CutMix's lam is the area kept from the image itself
    off = BatchMix()
    assert not off.enabled and off(x, y, rng)[2] == 1.0
    never = BatchMix(mixup_alpha=1.0, prob=0.0)
    assert never(x, y, rng)[2] == 1.0


def test_mixed_loss_is_the_lambda_weighted_cross_entropy():
    logits = torch.randn(5, 4)
    y, partner = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3])
    ce = torch.nn.functional.cross_entropy
    got = mixed_loss(logits, y, partner, 0.3, 0.0)
    assert torch.allclose(got, 0.3 * ce(logits, y) + 0.7 * ce(logits, partner))
    assert torch.allclose(mixed_loss(logits, y, partner, 1.0, 0.1), ce(logits, y, label_smoothing=0.1))


@pytest.mark.parametrize(
    "key, value",
    [
        ("stage1.augment", "randaug"),
        ("stage1.randaugment_magnitude", 31),
        ("stage1.mixup_alpha", -1.0),
        ("stage1.mix_prob", 1.5),
        ("stage1.label_smoothing", 1.0),
        ("stage1.cutout", -2),
    ],
)
def test_regulariser_config_is_validated(key, value):
    with pytest.raises(LortError, match=key.split(".")[1]):
        load_config(None, {key: value})


@pytest.mark.parametrize("policy", [None, "autoaugment", "randaugment"])
def test_augmentation_runs_on_the_images_device(policy):
    """Every operation computes on the images' device with the draws made on the CPU. On the
    meta device (shapes only) any CPU tensor mixed into the computation raises, so this is the
    check, without a GPU, that an accelerator gets no host tensor mid-batch."""
    pol = BatchPolicy(policy, 2, 14) if policy else None
    images = torch.from_numpy(_images(64))
    x = BatchAugment(policy=pol, cutout=8)(images.to("meta"), torch.Generator().manual_seed(0))
    assert x.device.type == "meta" and x.shape == (64, 3, 32, 32)
    for name in OPS:
        out = apply_op(name, images.float().to("meta"), torch.rand(64) * 2 - 1)
        assert out.device.type == "meta" and out.shape == images.shape, name
    labels = np.arange(64) % 10
    batches = list(
        iterate_batches(_images(64), labels, 16, True, torch.Generator().manual_seed(0), BatchAugment(), device="meta")
    )
    assert len(batches) == 4 and all(xb.device.type == "meta" and yb.device.type == "meta" for xb, yb in batches)


def test_the_draws_do_not_depend_on_where_the_images_are():
    """The crops, flips, policy and Cutout come from the CPU generator alone: the same seed
    draws the same numbers whether the batch is augmented on the CPU or elsewhere (the meta
    run consumes the generator exactly as the CPU run does)."""
    aug = BatchAugment(policy=BatchPolicy("autoaugment"), cutout=16)
    images = torch.from_numpy(_images(32))
    g_cpu, g_meta = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    aug(images, g_cpu)
    aug(images.to("meta"), g_meta)
    assert torch.equal(torch.rand(8, generator=g_cpu), torch.rand(8, generator=g_meta))
