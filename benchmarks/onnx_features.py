"""Features of a network lort did not train, read from an ONNX file, for the LORT suite.

    python benchmarks/onnx_features.py --model NET.onnx --tensor NAME --input-size 128 [--bgr]
        [--dataset cifar10] [--root DIR] [--imbalance-ratio 100] --out FEATURES.npz

The graph is cut at the intermediate tensor ``--tensor`` (a 4-D map is averaged over its
spatial positions, as a global-average-pooled backbone would be), run with onnxruntime on
every split of the long-tailed dataset (the same splits as ``lort train`` builds from the
same data options), with images resized to ``--input-size`` and normalised with ImageNet's
mean and std (``--bgr``: channels in BGR order, for networks trained on OpenCV images).
The file holds no classifier, as a user's features usually do not: methods that warm-start
then begin from a cross-entropy fit. Needs ``pip install onnx onnxruntime`` (not lort
dependencies).

The suite's pretrained set: the PP-OCRv4 text-detection network shipped inside the
``rapidocr_onnxruntime`` 1.4.4 wheel (``pip download --no-deps rapidocr_onnxruntime==1.4.4``,
file ``rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx``), its backbone's last stage
(``p2o.Mul.125``, 384 channels at stride 32).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import run_main

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_session(path: Path, tensor: str):
    """An onnxruntime session of the graph from its first input up to ``tensor``."""
    import onnx
    import onnxruntime as ort

    from lort.errors import LortError

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # the cut needs the tensors' types
    produced = {o for node in model.graph.node for o in node.output}
    if tensor not in produced:
        raise LortError(f"{path}: no tensor named {tensor!r} in the graph")
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    cut = onnx.utils.Extractor(model).extract_model(inputs[:1], [tensor])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(cut.SerializeToString(), opts, providers=["CPUExecutionProvider"]), inputs[0]


def features(session, input_name: str, images: np.ndarray, size: int, bgr: bool, batch: int) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start : start + batch])).permute(0, 3, 1, 2).float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x - mean) / std
        if bgr:
            x = x.flip(1)
        (y,) = session.run(None, {input_name: x.contiguous().numpy()})
        out.append(y.mean(axis=(2, 3)) if y.ndim == 4 else y.reshape(len(y), -1))
    return np.concatenate(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="ONNX file")
    ap.add_argument("--tensor", required=True, help="name of the intermediate tensor taken as the features")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--bgr", action="store_true", help="feed channels in BGR order")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--root", default=None, help="data root (default: LORT_DATA, else ../shared/data)")
    ap.add_argument("--imbalance-ratio", type=float, default=100.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from _common import default_root

    from lort.data import DataConfig, build_dataset
    from lort.data.features import FeatureSet
    from lort.errors import LortError

    path = Path(args.model)
    if not path.is_file():
        raise LortError(f"{path}: no such ONNX file")
    session, input_name = backbone_session(path, args.tensor)
    cfg = DataConfig(dataset=args.dataset, root=args.root or default_root(), imbalance_ratio=args.imbalance_ratio)
    ds = build_dataset(cfg)
    splits = {}
    for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        if split is None or len(split) == 0:
            continue
        if split.images is None:
            raise LortError(f"{args.dataset}: this script reads datasets held as image arrays (cifar10, cifar100)")
        splits[name] = (
            features(session, input_name, split.images, args.input_size, args.bgr, args.batch_size),
            np.asarray(split.labels, dtype=np.int64),
        )
        print(f"{name}: {splits[name][0].shape}", flush=True)
    meta = {
        "source": "onnx",
        "model": path.name,
        "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "tensor": args.tensor,
        "input_size": args.input_size,
        "normalize": "imagenet",
        "channel_order": "bgr" if args.bgr else "rgb",
        "data": {"dataset": args.dataset, "imbalance_ratio": args.imbalance_ratio},
    }
    FeatureSet(splits=splits, classes=list(ds.classes), meta=meta).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
