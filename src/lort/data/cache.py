"""Content-keyed cache of decoded arrays, memory-mapped on load.

An entry is a folder ``<cache>/<key>/`` of ``.npy`` files plus ``meta.json`` written
last; the meta records each array's shape, dtype and sha256. An entry whose files are
missing, of the wrong size or whose hash differs is rebuilt, never trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import atomic_path, sha256_file, write_json

CACHE_VERSION = 1


def cache_root() -> Path:
    """``LORT_CACHE`` if set, else ``~/.cache/lort``."""
    env = os.environ.get("LORT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lort"


def _load_entry(folder: Path) -> dict[str, np.ndarray] | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        out = {}
        for name, info in meta["arrays"].items():
            path = folder / f"{name}.npy"
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                return None
            if sha256_file(path) != info["sha256"]:
                return None
            arr = np.load(path, mmap_mode="r")
            if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                return None
            out[name] = arr
        return out
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def cached_arrays(
    key: str, build: Callable[[], dict[str, np.ndarray]], root: Path | None = None
) -> dict[str, np.ndarray]:
    """Return the arrays cached under ``key``, building and storing them first if needed."""
    folder = (root or cache_root()) / key
    entry = _load_entry(folder)
    if entry is not None:
        return entry
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (e.g. torchrun ranks)
        return _load_entry(folder) or _build_entry(folder, build)


def _build_entry(folder: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    arrays = build()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"version": CACHE_VERSION, "arrays": {}}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        path = folder / f"{name}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        meta["arrays"][name] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    write_json(folder / "meta.json", meta)
    entry = _load_entry(folder)
    assert entry is not None, f"cache entry {folder} failed verification right after writing"
    return entry
