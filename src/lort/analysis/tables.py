"""How a value is written in a table cell (leaderboards, reports): one rule for all tables."""

from __future__ import annotations


def format_cell(v) -> str:
    """``None`` -> an en dash, floats with two decimals, hyperparameter dicts as
    ``k=v`` pairs (floats with ``%g``), anything else as ``str``."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x:g}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items())
    return str(v)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, every cell written by :func:`format_cell`; ends with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
