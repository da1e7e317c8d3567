"""The layering that docs/architecture.md draws, and one owner for each default.

Imports are read from the source (every ``import`` and ``from ... import``, at module
level and inside functions), so a lazy import that closes a cycle counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lort"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of lort it imports}``; ``from .pkg import name`` counts as an
    import of ``pkg.name`` where that is a module, else of ``pkg``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name if _is_package(path) else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("lort")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("lort"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue  # a package and its own modules (re-exports) are not a cycle
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_the_graph_reader_sees_known_imports():
    g = import_graph()
    assert "lort.stage2.plan" in g["lort.stage2.engine"]
    assert "lort.stage2.selection" in g["lort.stage2.trainer"]
    assert "lort.stage2.methods" in g["lort.stage2.compare"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_anywhere_in_src():
    assert _cycle(import_graph()) is None


def test_stage2_imports_nothing_from_stage1():
    g = import_graph()
    for m in g:
        if m.startswith("lort.stage2"):
            assert not {d for d in g[m] if d.startswith("lort.stage1")}, m


def test_config_and_data_import_no_stage2_method():
    g = import_graph()
    for m in g:
        if m == "lort.config" or m.startswith("lort.data"):
            reached = _reach(g, m)
            bad = {d for d in reached if d.startswith("lort.stage2") or d.startswith("lort.stage1")}
            assert not bad - {"lort.stage2.schedule"}, (m, bad)


def test_the_plan_imports_nothing_that_trains_and_nothing_below_imports_orchestration():
    g = import_graph()
    for low in ("lort.stage2.plan", "lort.stage2.selection", "lort.stage2.trainer", "lort.stage2.methods"):
        reached = _reach(g, low)
        assert not reached & {"lort.stage2.engine", "lort.stage2.compare", "lort.stage2.workflow"}, low
    assert "lort.stage2.compare" not in _reach(g, "lort.stage2.engine")


# ----------------------------------------------------------------------------- one owner per default

# (pattern of the default written out, the one file that may write it)
OWNERS = [
    (r"\b0\.9999\b", "stage2/losses.py"),  # the effective-number beta
    (r"scale\s*=\s*30|\b30\.0\b", "stage2/methods.py"),  # LDAM's cosine scale
    (r"val_per_class\s*(:\s*int\s*)?=\s*20\b|VAL_PER_CLASS\s*=", "data/longtail.py"),
    (r"imbalance_ratio\s*(:\s*float\s*)?=\s*100|IMBALANCE_RATIO\s*=", "data/longtail.py"),
    (r"\(5e-4,\s*5e-3,\s*5e-2\)", "stage2/schedule.py"),  # the learning rates searched
    (r"LOG_LOSS_RTOL\s*=|ACC_ATOL\s*=", "stage2/selection.py"),
    (r"lr\s*=\s*\w*lrs\[0\]", "stage2/schedule.py"),  # a Schedule built from a list of rates
    (r"def (lexicographic_greater|best_epoch|selection_key)\b", None),  # old copies of the selection rule
]


def test_each_default_is_written_once_in_its_owner():
    files = {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}
    for pattern, owner in OWNERS:
        where = sorted(name for name, text in files.items() if re.search(pattern, text))
        assert where == ([owner] if owner else []), f"{pattern!r} written in {where}, owner {owner}"


def test_the_owner_check_catches_a_copy(tmp_path):
    text = "def f(beta=0.9999):\n    return beta\n"
    assert re.search(OWNERS[0][0], text)
