"""Dataset readers: official CIFAR archives, image-folder trees (or a .tar.gz of one),
and the ImageNet-LT / iNaturalist 2018 / Places-LT list files.

Every reader returns a :class:`~lort.data.splits.RawDataset`. Bad input (a missing or
truncated archive, a failed checksum, a malformed list line, a label out of range, a
missing or unreadable image) raises :class:`~lort.errors.LortError` naming the file and,
where there is one, the line. Nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import LortError
from ..io import atomic_path, md5_file, remove_stale_temporaries, sha256_file
from .cache import cached_arrays
from .splits import RawDataset, Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SMALL_IMAGE_MAX_SIDE = 64

# Official archives (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "archive": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "jpg": ["cifar10-jpg.tar.gz", "cifar10-jpg"],
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "archive": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "jpg": ["cifar100-jpg.tar.gz", "cifar100-jpg"],
    },
}


def data_root(root: str | os.PathLike | None) -> Path:
    """The data folder: the argument, else ``LORT_DATA``, else an error saying so."""
    if root is None:
        root = os.environ.get("LORT_DATA")
    if not root:
        raise LortError(
            "no data location: pass --root DIR or set the LORT_DATA environment variable "
            "(CIFAR: or add --download, or data.download: true, to fetch the official archive)"
        )
    path = Path(root).expanduser()
    if not path.exists():
        raise LortError(f"data location {path} does not exist")
    return path


# --------------------------------------------------------------------------- CIFAR


MIRROR_ENV = "LORT_DOWNLOAD_MIRROR"


def download_folder() -> Path:
    """Where downloaded archives go when no data location is set:
    ``$LORT_CACHE/downloads`` (default ``~/.cache/lort/downloads``)."""
    cache = os.environ.get("LORT_CACHE") or Path.home() / ".cache" / "lort"
    return Path(cache).expanduser() / "downloads"


def archive_url(spec: dict) -> str:
    """The official address, or ``$LORT_DOWNLOAD_MIRROR/<archive>`` (a mirror or a local
    server; the official MD5 is checked all the same)."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{spec['archive']}" if mirror else spec["url"]


def download(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with a progress bar and check its MD5. The bytes go to a
    temporary file beside ``dest`` that is renamed only after the whole body arrived and the
    checksum matched: an interrupted or failed download leaves nothing that is later trusted."""
    remove_stale_temporaries(dest.parent, dest.name)  # a killed earlier download's
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {dest.name}",
                    disable=not progress,
                    leave=False,
                ) as bar:
                    received = 0
                    while block := resp.read(1 << 20):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
            got = md5_file(tmp)
            if got != md5:
                raise LortError(f"download of {url} failed its checksum: md5 {got}, expected {md5}; nothing was kept")
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        raise LortError(
            f"cannot download {url} ({type(exc).__name__}: {exc}); nothing was kept. No network? "
            f"Place {dest.name} in {dest.parent} by hand"
        ) from None
    return dest


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = pickle.loads(data, encoding="bytes")
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise LortError(f"{where}: not a readable CIFAR batch ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise LortError(f"{where}: not a readable CIFAR batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_members(spec: dict, source: Path) -> dict[str, bytes]:
    """Raw bytes of the batch and meta files, from the archive or its extracted folder."""
    wanted = spec["train"] + spec["test"] + [spec["meta"]]
    out: dict[str, bytes] = {}
    if source.is_dir():
        for name in wanted:
            path = source / name
            if not path.is_file():
                raise LortError(f"{path}: missing from the extracted CIFAR folder")
            out[name] = path.read_bytes()
        return out
    try:
        with tarfile.open(source, "r:gz") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    f = tf.extractfile(member)
                    assert f is not None
                    out[base] = f.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise LortError(f"{source}: truncated or corrupt archive ({exc})") from None
    missing = [n for n in wanted if n not in out]
    if missing:
        raise LortError(f"{source}: archive lacks {', '.join(missing)}; truncated or not a CIFAR archive")
    return out


def _decode_cifar(spec: dict, source: Path) -> dict[str, np.ndarray]:
    members = _read_cifar_members(spec, source)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images, labels = [], []
        for name in spec[split]:
            batch = _unpickle(members[name], f"{source}/{name}")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                lab = np.asarray(batch[spec["labels_key"]], dtype=np.int64)
            except (KeyError, ValueError) as exc:
                raise LortError(f"{source}/{name}: malformed CIFAR batch ({exc})") from None
            if len(data) != len(lab):
                raise LortError(f"{source}/{name}: {len(data)} images but {len(lab)} labels")
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(lab)
        arrays[f"{split}_images"] = np.concatenate(images)
        arrays[f"{split}_labels"] = np.concatenate(labels)
    meta = _unpickle(members[spec["meta"]], f"{source}/{spec['meta']}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(spec["names_key"], [])]
    if not names:
        raise LortError(f"{source}/{spec['meta']}: no class names ({spec['names_key']})")
    arrays["classes"] = np.asarray(names)
    for split in ("train", "test"):
        lab = arrays[f"{split}_labels"]
        bad = np.flatnonzero((lab < 0) | (lab >= len(names)))
        if len(bad):
            raise LortError(f"{source}: {split} label {lab[bad[0]]} at index {bad[0]} outside [0, {len(names)})")
    return arrays


def _fingerprint(path: Path) -> str:
    """Content hash of an archive; for a folder, a hash of its file names, sizes and times."""
    if path.is_file():
        return sha256_file(path)[:32]
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def read_cifar(name: str, root: str | os.PathLike | None = None, download_ok: bool = False) -> RawDataset:
    """CIFAR-10 or CIFAR-100 from the official python archive (or its extracted folder).

    Also accepts an image-folder copy (``cifar10-jpg.tar.gz`` or ``cifar10-jpg/``) when
    the official archive is absent. With ``download_ok`` a missing archive is downloaded
    from the official address (or ``LORT_DOWNLOAD_MIRROR``) and its MD5 checked, into the
    data location when one is set (``root`` or ``LORT_DATA``, created if need be), else
    into :func:`download_folder`.
    """
    if name not in CIFAR:
        raise LortError(f"unknown CIFAR dataset {name!r}; choose cifar10 or cifar100")
    spec = CIFAR[name]
    given = root or os.environ.get("LORT_DATA")
    if download_ok:
        root_path = Path(given).expanduser() if given else download_folder()
        root_path.mkdir(parents=True, exist_ok=True)
    else:
        root_path = data_root(root)
    candidates = [root_path / spec["folder"], root_path / spec["archive"]]
    source = next((c for c in candidates if c.exists()), None)
    if source is None:
        for alt in spec["jpg"]:
            if (root_path / alt).exists():
                return read_image_folder(root_path / alt, name=name)
    if source is None and download_ok:
        source = download(archive_url(spec), root_path / spec["archive"], spec["md5"])
    if source is None:
        raise LortError(
            f"{name}: found neither {spec['archive']} nor {spec['folder']}/ nor "
            f"{' / '.join(spec['jpg'])} in {root_path}; pass --download to fetch {spec['url']}"
        )
    if source.is_file() and source.name == spec["archive"] and download_ok:
        got = md5_file(source)
        if got != spec["md5"]:
            raise LortError(f"{source}: md5 {got} does not match the official {spec['md5']}")
    key = f"{name}-{_fingerprint(source)}"
    arrays = cached_arrays(key, lambda: _decode_cifar(spec, source))
    classes = [str(c) for c in arrays["classes"]]
    splits = {
        s: Split(labels=np.asarray(arrays[f"{s}_labels"]), images=arrays[f"{s}_images"]) for s in ("train", "test")
    }
    return RawDataset(name=name, classes=classes, splits=splits, source=str(source))


# --------------------------------------------------------------------------- image folders


def _decode_image(data: bytes | Path, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LortError(f"{where}: unreadable image ({exc})") from None
    if size is not None and img.size != size:
        raise LortError(
            f"{where}: image is {img.size[0]}x{img.size[1]}, others in this set are "
            f"{size[0]}x{size[1]}; resize the set or use a large-image (streamed) layout"
        )
    return np.asarray(img, dtype=np.uint8)


def _tree_entries(source: Path) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [relative paths sorted]}}`` for a folder or a .tar.gz tree."""
    tree: dict[str, dict[str, list[str]]] = {}

    def add(rel_parts: list[str], rel: str) -> None:
        if len(rel_parts) < 3 or not rel_parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            return
        split, cls = rel_parts[-3], rel_parts[-2]
        tree.setdefault(split, {}).setdefault(cls, []).append(rel)

    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, source)
                add(rel.split(os.sep), rel)
    else:
        try:
            with tarfile.open(source, "r:gz") as tf:
                for member in tf:
                    if member.isfile():
                        add(member.name.split("/"), member.name)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise LortError(f"{source}: truncated or corrupt archive ({exc})") from None
    for classes in tree.values():
        for files in classes.values():
            files.sort()
    return tree


def _decode_tree(source: Path, tree: dict, classes: list[str], splits: list[str]) -> dict[str, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    wanted = {rel for s in splits for files in tree[s].values() for rel in files}
    blobs: dict[str, bytes] = {}
    if source.is_dir():

        def read(rel: str) -> bytes | Path:
            return source / rel
    else:
        try:
            with tarfile.open(source, "r:gz") as tf:
                for member in tf:
                    if member.isfile() and member.name in wanted:
                        f = tf.extractfile(member)
                        assert f is not None
                        blobs[member.name] = f.read()
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise LortError(f"{source}: truncated or corrupt archive ({exc})") from None

        def read(rel: str) -> bytes | Path:
            return blobs[rel]

    arrays: dict[str, np.ndarray] = {}
    size = None
    for split in splits:
        images, labels = [], []
        for cls in classes:
            for rel in tree[split].get(cls, []):
                img = _decode_image(read(rel), f"{source}/{rel}" if source.is_file() else str(source / rel), size)
                if size is None:
                    size = (img.shape[1], img.shape[0])
                images.append(img)
                labels.append(index[cls])
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return arrays


def read_image_folder(root: str | os.PathLike, name: str | None = None, cache: str = "auto") -> RawDataset:
    """An image-folder tree ``root/{train,test[,val]}/<class>/<image>``, or a .tar.gz of one.

    Classes are the sorted folder names of ``train``; files are taken in sorted name
    order. Small images (both sides <= 64 px) are decoded once into a memory-mapped
    uint8 cache (``cache='auto'`` or ``'always'``); large ones are streamed from their
    paths (``cache='never'``, not possible inside an archive).
    """
    source = Path(root).expanduser()
    if not source.exists():
        raise LortError(f"{source}: no such image folder or archive")
    if source.is_file() and not source.name.endswith((".tar.gz", ".tgz")):
        raise LortError(f"{source}: expected a folder or a .tar.gz archive of an image-folder tree")
    tree = _tree_entries(source)
    if "train" not in tree:
        raise LortError(f"{source}: no train/<class>/<image> files found")
    if "test" not in tree:
        raise LortError(f"{source}: no test/<class>/<image> files found")
    classes = sorted(tree["train"])
    for split in tree:
        extra = sorted(set(tree[split]) - set(classes))
        if split in ("test", "val") and extra:
            raise LortError(f"{source}: {split} has class folder {extra[0]!r} that train lacks")
    splits = [s for s in ("train", "val", "test") if s in tree]
    name = name or source.name.removesuffix(".tar.gz").removesuffix(".tgz")
    if cache == "auto":
        first = tree["train"][classes[0]][0]
        if source.is_dir():
            with Image.open(source / first) as img:
                small = max(img.size) <= SMALL_IMAGE_MAX_SIDE
        else:
            small = True
        cache = "always" if small else "never"
    if cache == "never":
        if source.is_file():
            raise LortError(f"{source}: large images cannot be streamed from an archive; extract it first")
        index = {c: i for i, c in enumerate(classes)}
        out = {}
        for split in splits:
            paths, labels = [], []
            for cls in classes:
                for rel in tree[split].get(cls, []):
                    paths.append(str(source / rel))
                    labels.append(index[cls])
            out[split] = Split(labels=np.asarray(labels), paths=paths)
        return RawDataset(name=name, classes=classes, splits=out, source=str(source))
    key = f"imagefolder-{_fingerprint(source)}"
    arrays = cached_arrays(key, lambda: _decode_tree(source, tree, classes, splits))
    out = {s: Split(labels=np.asarray(arrays[f"{s}_labels"]), images=arrays[f"{s}_images"]) for s in splits}
    return RawDataset(name=name, classes=classes, splits=out, source=str(source))


# --------------------------------------------------------------------------- list files

# Standard list files of the large long-tailed benchmarks (Liu et al., 2019, OLTR;
# iNaturalist 2018 uses its official val set as the test set).
LIST_DATASETS = {
    "imagenet_lt": {
        "num_classes": 1000,
        "train": "ImageNet_LT_train.txt",
        "val": "ImageNet_LT_val.txt",
        "test": "ImageNet_LT_test.txt",
    },
    "inat2018": {
        "num_classes": 8142,
        "train": "iNaturalist18_train.txt",
        "val": None,
        "test": "iNaturalist18_val.txt",
    },
    "places_lt": {
        "num_classes": 365,
        "train": "Places_LT_train.txt",
        "val": "Places_LT_val.txt",
        "test": "Places_LT_test.txt",
    },
}


def read_list_file(
    list_file: str | os.PathLike,
    image_root: str | os.PathLike,
    num_classes: int | None = None,
    check_files: bool = True,
) -> Split:
    """Parse ``relative/path label`` lines. The path may contain spaces; the label is the
    last whitespace-separated field. Blank lines are ignored; anything else that does
    not parse, a label out of ``[0, num_classes)`` or a missing image is an error
    naming the file and line."""
    list_path = Path(list_file)
    image_root = Path(image_root)
    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LortError(f"{list_path}: cannot read list file ({exc})") from None
    paths, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        parts = stripped.rsplit(None, 1)
        if len(parts) != 2:
            raise LortError(f"{list_path}:{lineno}: expected 'relative/path label', got {stripped!r}")
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise LortError(f"{list_path}:{lineno}: label {label_text!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise LortError(f"{list_path}:{lineno}: label {label} outside {bound}")
        full = image_root / rel
        if check_files and not full.is_file():
            raise LortError(f"{list_path}:{lineno}: image {full} does not exist")
        paths.append(str(full))
        labels.append(label)
    if not paths:
        raise LortError(f"{list_path}: list file holds no entries")
    return Split(labels=np.asarray(labels, dtype=np.int64), paths=paths)


def read_list_dataset(
    name: str,
    image_root: str | os.PathLike,
    list_dir: str | os.PathLike | None = None,
    lists: dict[str, str] | None = None,
    num_classes: int | None = None,
    check_files: bool = True,
) -> RawDataset:
    """ImageNet-LT / iNaturalist 2018 / Places-LT (or any set described by list files).

    ``lists`` maps split names to list files; by default the standard file names of
    ``name`` are looked up in ``list_dir`` (default: ``image_root``)."""
    spec = LIST_DATASETS.get(name, {})
    if lists is None:
        if not spec:
            raise LortError(f"unknown list dataset {name!r}; give list files for train and test")
        base = Path(list_dir or image_root)
        lists = {s: str(base / spec[s]) for s in ("train", "val", "test") if spec.get(s)}
    if "train" not in lists or "test" not in lists:
        raise LortError(f"{name}: list files for both train and test are required")
    num_classes = num_classes or spec.get("num_classes")
    splits = {split: read_list_file(path, image_root, num_classes, check_files) for split, path in lists.items()}
    if num_classes is None:
        num_classes = int(max(s.labels.max() for s in splits.values())) + 1
    classes = [str(i) for i in range(num_classes)]
    return RawDataset(name=name, classes=classes, splits=splits, source=str(image_root), long_tailed=True)
