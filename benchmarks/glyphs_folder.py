"""Glyphs-100: a 100-class image folder rendered from the fonts installed here, for the LORT
suite's set with many classes (CIFAR-100 is not available offline).

    python benchmarks/glyphs_folder.py --out DIR [--fonts /usr/share/fonts/truetype]
        [--train-per-class 500] [--test-per-class 100] [--seed 0]

Classes: the 10 digits, 26 upper- and 26 lower-case Latin letters, 24 lower-case Greek
letters and 14 symbols. Each image is one character in a random font of those found under
``--fonts`` (every ``.ttf`` that draws all 100 characters; Debian's ``fonts-dejavu-core``
and ``fonts-liberation`` give 38), at a random size, position and rotation, in random
colours on a random background, with noise and a slight blur: 32 x 32 RGB PNGs written as
``DIR/{train,test}/<class>/<n>.png``. Look-alike classes (``l``/``I``/``1``, ``o``/``0``/``ο``)
are kept: their confusion is part of the task. ``lort train --dataset imagefolder --root
DIR`` then builds the long-tailed split like any image folder.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import numpy as np
from _common import run_main
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lort.errors import LortError

GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
SYMBOLS = {"hash": "#", "dollar": "$", "percent": "%", "ampersand": "&", "at": "@", "question": "?",
           "exclamation": "!", "plus": "+", "equals": "=", "less": "<", "greater": ">", "asterisk": "*",
           "slash": "/", "tilde": "~"}  # fmt: skip
GREEK_NAMES = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
               "sigma tau upsilon phi chi psi omega").split()  # fmt: skip


def classes() -> list[tuple[str, str]]:
    """(folder name, character) of the 100 classes."""
    out = [(f"digit_{c}", c) for c in "0123456789"]
    out += [(f"upper_{c}", c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    out += [(f"lower_{c}", c) for c in "abcdefghijklmnopqrstuvwxyz"]
    out += [(f"greek_{n}", c) for n, c in zip(GREEK_NAMES, GREEK, strict=True)]
    out += [(f"symbol_{n}", c) for n, c in SYMBOLS.items()]
    return out


def usable_fonts(folder: Path, chars: list[str]) -> list[Path]:
    """Fonts that draw every character (none falls back to the font's missing-glyph box)."""
    found = []
    for path in sorted(folder.rglob("*.ttf")):
        try:
            font = ImageFont.truetype(str(path), 24)
        except OSError:
            continue
        missing = np.asarray(font.getmask("\ue000")).tobytes()  # a private-use code point: the missing glyph
        if all(np.asarray(font.getmask(c)).tobytes() != missing for c in chars):
            found.append(path)
    return found


def render(char: str, font_path: Path, rng: random.Random) -> Image.Image:
    size = rng.randint(18, 28)
    font = ImageFont.truetype(str(font_path), size)
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    while True:  # a foreground that stands out from the background
        fg = tuple(rng.randint(0, 255) for _ in range(3))
        if abs(sum(fg) - sum(bg)) > 240:
            break
    canvas = Image.new("RGB", (48, 48), bg)
    draw = ImageDraw.Draw(canvas)
    draw.text((24 + rng.uniform(-3, 3), 24 + rng.uniform(-3, 3)), char, font=font, fill=fg, anchor="mm")
    canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, fillcolor=bg)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    arr = np.asarray(canvas.crop((8, 8, 40, 40)), dtype=np.float32)
    arr += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 12), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (must not exist)")
    ap.add_argument("--fonts", default="/usr/share/fonts/truetype", help="folder searched for .ttf fonts")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise LortError(f"{out}: already exists")
    names = classes()
    fonts = usable_fonts(Path(args.fonts), [c for _, c in names])
    if not fonts:
        raise LortError(f"{args.fonts}: no .ttf font draws all {len(names)} characters")
    print(f"{len(fonts)} fonts, {len(names)} classes")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(args.seed)
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        for folder, char in names:
            d = tmp / split / folder
            d.mkdir(parents=True)
            for i in range(n):
                render(char, rng.choice(fonts), rng).save(d / f"{i:05d}.png")
    tmp.rename(out)  # the folder appears whole or not at all
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
