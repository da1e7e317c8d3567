"""The README's "Use LORT on your model" snippets, run exactly as written; the documents'
promises (the bad-input catalogue names real tests, every measured figure has a file,
the generated pages are current, the site builds strictly, the README stays short)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from .conftest import make_image_tree

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def snippets(section: str) -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```(python|bash)\n(.*?)```", body, flags=re.S)


SECTION = "Use LORT on your model"


def test_the_section_has_the_three_entry_points():
    langs = [lang for lang, _ in snippets(SECTION)]
    assert langs == ["python", "python", "bash"]


@pytest.mark.parametrize("index", [0, 1])
def test_python_snippet_runs(tmp_path, index):
    code = snippets(SECTION)[index][1]
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()
    if index == 0:
        assert "'smooth'" in res.stdout and "'epoch'" in res.stdout
    else:
        assert "torch.Size([4, 64]) True" in res.stdout


def test_shell_snippet_runs(tmp_path):
    data = make_image_tree(tmp_path / "my data", {"gull": (14, 3), "tern": (6, 3), "auk": (4, 3)}, size=80, fmt="JPEG")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    env = dict(os.environ, DATA=str(data), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    code = snippets(SECTION)[2][1]
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "feats.npz").is_file()
    assert (tmp_path / "compare" / "leaderboard.md").is_file()
    assert (tmp_path / "lort" / "summary.json").is_file()


def test_every_row_of_the_bad_input_catalogue_names_an_existing_test():
    text = (DOCS / "reliability.md").read_text()
    table = text[text.index("## Bad input the tool detects") :]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| input") and "---" not in ln]
    assert len(rows) >= 20
    for row in rows:
        ids = re.findall(r"`(tests/\w+\.py)::(\w+)`", row.split(" | ")[-1])
        assert ids, f"row names no test: {row[:80]}"
        for path, name in ids:
            assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name} does not exist"


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_the_generated_pages_are_current():
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_the_generated_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for name, render in gen.PAGES.items():
        (tmp_path / name).write_text(render().rstrip("\n") + "\n")
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    assert gen.main(["--check"]) == 0
    (tmp_path / "methods.md").write_text("stale\n")
    assert gen.main(["--check"]) == 1


def test_the_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "index.html").is_file()


# ----------------------------------------------------------------------------- measured figures have files

RESULTS = README.parent / "results"
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?:e[+-]?\d+)?(?![\w.])")


def _results_text() -> str:
    parts = []
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in (".md", ".json", ".txt", ".csv", ".log", ".time", ".jsonl"):
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def _forms(number: str) -> set[str]:
    """Ways a file may write the README's ``number``: as written, as a fraction (a
    percentage), or with a longer mantissa."""
    forms = {number}
    if "e" not in number:
        value = float(number)
        decimals = len(number.split(".")[1])
        forms.add(f"{value / 100:.{decimals + 2}f}".rstrip("0"))
    return forms


def table_numbers(path: Path, section: str | None = None) -> list[str]:
    text = path.read_text()
    start = text.index(f"## {section}") if section else 0
    end = text.find("\n## ", start + 1) if section else -1
    rows = [line for line in text[start:end].splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [n for row in rows for n in NUMBER.findall(row.split("|", 2)[-1])]


@pytest.mark.parametrize("where", [("README.md", "Results"), ("docs/benchmarks.md", None)])
def test_every_number_in_the_measured_results_tables_is_found_in_a_file_under_results(where):
    text = _results_text()
    numbers = table_numbers(ROOT / where[0], where[1])
    assert len(numbers) > 20
    missing = sorted({n for n in numbers if not any(f in text for f in _forms(n))}, key=float)
    assert not missing, f"{where[0]} table figures with no file under results/: {missing}"
