"""Downloading CIFAR on a fresh machine, served by a local HTTP server (no test reaches the
internet): checked by MD5, written atomically, nothing kept after a failure."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lort.data import DataConfig, build_dataset
from lort.data.readers import CIFAR, MIRROR_ENV, download_folder
from lort.errors import LortError

from .conftest import make_cifar_archive


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False  # send half of the body under the full Content-Length, then hang up
    requests: list[str] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's spelling)
        type(self).requests.append(self.path)
        if not type(self).truncate:
            return super().do_GET()
        data = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local server of a generated official-format CIFAR-10 archive; yields (folder, md5)."""
    served = tmp_path / "served"
    served.mkdir()
    archive = make_cifar_archive(served, "cifar10", per_class_train=6, per_class_test=2)
    handler = type("Handler", (_Handler,), {"requests": [], "truncate": False})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    monkeypatch.delenv("LORT_DATA", raising=False)
    try:
        yield handler, hashlib.md5(archive.read_bytes()).hexdigest()
    finally:
        httpd.shutdown()
        httpd.server_close()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_fetches_checks_and_is_used_again(server, monkeypatch):
    handler, md5 = server
    monkeypatch.setitem(CIFAR["cifar10"], "md5", md5)
    ds = build_dataset(DataConfig(dataset="cifar10", download=True, val_per_class=0, imbalance_ratio=2))
    assert ds.num_classes == 10 and len(ds.test) == 20
    assert _files(download_folder()) == ["cifar-10-python.tar.gz"]
    again = build_dataset(DataConfig(dataset="cifar10", download=True, val_per_class=0, imbalance_ratio=2))
    assert again.train_counts.tolist() == ds.train_counts.tolist()
    assert handler.requests == ["/cifar-10-python.tar.gz"]  # fetched once


def test_download_goes_to_lort_data_when_set(server, monkeypatch, tmp_path):
    _, md5 = server
    monkeypatch.setitem(CIFAR["cifar10"], "md5", md5)
    target = tmp_path / "new" / "data"  # does not exist yet
    monkeypatch.setenv("LORT_DATA", str(target))
    build_dataset(DataConfig(dataset="cifar10", download=True, val_per_class=0, imbalance_ratio=2))
    assert _files(target) == ["cifar-10-python.tar.gz"]


def test_a_failed_checksum_keeps_nothing(server):
    with pytest.raises(LortError, match="failed its checksum.*nothing was kept"):
        build_dataset(DataConfig(dataset="cifar10", download=True))
    assert _files(download_folder()) == []


def test_an_interrupted_download_keeps_nothing_and_a_killed_ones_leftover_is_removed(server, monkeypatch):
    handler, md5 = server
    monkeypatch.setitem(CIFAR["cifar10"], "md5", md5)
    folder = download_folder()
    folder.mkdir(parents=True)
    leftover = folder / ".cifar-10-python.tar.gz.abc123.tmp"  # what a SIGKILLed download leaves
    leftover.write_bytes(b"partial")
    handler.truncate = True
    with pytest.raises(LortError, match="cannot download.*nothing was kept"):
        build_dataset(DataConfig(dataset="cifar10", download=True))
    assert _files(folder) == []
    handler.truncate = False
    build_dataset(DataConfig(dataset="cifar10", download=True, val_per_class=0, imbalance_ratio=2))
    assert _files(folder) == ["cifar-10-python.tar.gz"]


def test_cli_download_failure_is_one_line_with_exit_code_2(server, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "LORT_DATA"}
    res = subprocess.run(
        [sys.executable, "-m", "lort", "data", "info", "--dataset", "cifar10", "--download"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "downloading" not in ln]
    assert len(lines) == 1 and "failed its checksum" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_without_data_or_download_the_error_says_how_to_get_data(monkeypatch):
    monkeypatch.delenv("LORT_DATA", raising=False)
    with pytest.raises(LortError, match="--download"):
        build_dataset(DataConfig(dataset="cifar10"))
