"""Fashion-MNIST as an image-folder tree, for the LORT suite's Fashion-MNIST-LT set.

    python benchmarks/fashion_mnist_folder.py [--source /usr/share/datasets/fashion-mnist] --out DIR

Reads the four official IDX files (``train-images-idx3-ubyte.gz`` ... as Debian's
``dataset-fashion-mnist`` package installs them) and writes ``DIR/{train,test}/<class>/<n>.png``
(28 x 28 grayscale). ``lort train --set data.dataset=imagefolder --set data.root=DIR`` then
builds the long-tailed split from it like any image folder.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from _common import run_main
from PIL import Image

from lort.errors import LortError

CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimensions, then unsigned bytes."""
    try:
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise LortError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise LortError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise LortError(f"{path}: {body.size} values for dimensions {tuple(dims)}")
    return body.reshape(tuple(dims))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    src, out = Path(args.source), Path(args.out)
    if out.exists():
        raise LortError(f"{out}: exists already")
    partial = out.with_name(out.name + ".partial")  # the tree appears under --out only when whole
    shutil.rmtree(partial, ignore_errors=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise LortError(f"{src}: {split} has {len(images)} images but {len(labels)} labels")
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = partial / split / CLASSES[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, format="PNG")
        print(f"{split}: {len(images)} images in {len(CLASSES)} classes")
    partial.rename(out)
    print(f"written to {out}")


if __name__ == "__main__":
    run_main(main)
