"""Atomic outputs: every file lort writes appears complete or not at all.

Writers create a temporary file in the destination folder, flush and fsync it, then
``os.replace`` it over the destination, so a crash or SIGKILL at any point leaves
either the previous file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FAILPOINT_ENV = "LORT_FAILPOINT"
_writes: dict[str, int] = {}


def _failpoint(name: str) -> None:
    """Crash-test hook: with ``LORT_FAILPOINT=NAME:N`` the process kills itself (SIGKILL)
    the N-th time it passes the point called NAME: the N-th write of a file called NAME,
    after the temporary file is written and before it is renamed into place -- the worst
    moment for a crash -- or ``stage1-step``, after the N-th optimisation step of stage 1
    (a kill in the middle of an epoch, at the same step on any machine). Unset: no effect."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":")
    if target != name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if str(_writes[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)


failpoint = _failpoint  # the crash-test hook, for points that are not file writes


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` and below (never a real
    output); with ``name``, only those of that one file in ``folder`` itself."""
    removed = []
    folder = Path(folder)
    found = folder.glob(f".{name}.*.tmp") if name else folder.rglob(".*.tmp")
    for tmp in found if folder.is_dir() else []:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _failpoint(path.name)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, to_json(obj))


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """An uncompressed ``.npz`` (as ``np.savez`` writes it), written atomically. An array may
    also be given as ``(shape, dtype, blocks)``: its rows are written block by block as
    ``blocks`` yields them, so that it never exists whole in memory (e.g. the logits of a
    large split)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                if not isinstance(value, tuple):
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=True)  # as np.savez
                    continue
                shape, dtype, blocks = value
                dtype = np.dtype(dtype)
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
                np.lib.format.write_array_header_1_0(f, header)
                written = 0
                for block in blocks:
                    block = np.ascontiguousarray(block, dtype=dtype)
                    f.write(block.tobytes())
                    written += block.size
                if written != int(np.prod(shape)):
                    raise ValueError(
                        f"{name}: blocks held {written} values, shape {tuple(shape)} needs {np.prod(shape)}"
                    )


MAP_AT_BYTES = 1 << 20


def load_npz(path: str | os.PathLike, mapped: bool = True) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, by name.

    Arrays of at least ``MAP_AT_BYTES`` stored uncompressed (as :func:`save_npz` and ``np.savez`` store them) are
    memory-mapped copy-on-write where ``mapped``: nothing is read until used, the pages
    are the file system's cache rather than a second copy, and writing to the array
    changes only this process's view. Compressed members, object arrays and Fortran
    layouts are read into memory as ``np.load`` reads them. Raises what ``np.load`` and
    ``zipfile`` raise on a file that is not a readable ``.npz``."""
    out = {}
    with np.load(path, allow_pickle=False) as data:
        members = {name.removesuffix(".npy"): name for name in data.zip.namelist()}
        with open(path, "rb") as raw:
            for key in data.files:
                info = data.zip.getinfo(members[key])
                arr = _mapped_member(path, raw, info) if mapped and info.file_size >= MAP_AT_BYTES else None
                out[key] = data[key] if arr is None else arr
    return out


def _mapped_member(path, raw, info) -> np.ndarray | None:
    """The array of zip member ``info``, memory-mapped, or None where it cannot be."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    raw.seek(info.header_offset)
    local = raw.read(30)  # the local file header: its name and extra field may differ from the directory's
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    raw.seek(start)
    try:
        version = np.lib.format.read_magic(raw)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if fortran or dtype.hasobject:
        return None
    offset = raw.tell()
    if offset - start + dtype.itemsize * int(np.prod(shape)) > info.file_size:
        return None
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="c", shape=shape, offset=offset)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")
