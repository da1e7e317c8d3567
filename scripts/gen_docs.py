"""Write the generated pages of the documentation site from the code.

- ``docs/methods.md``: every registered stage-2 method (what ``lort methods`` prints),
  its source, hyperparameters (type, range, defaults, the values searched) and deviations;
- ``docs/configuration.md``: every key of a run config (``lort run CONFIG``), its type,
  default and the comment beside it in the dataclass.

``python scripts/gen_docs.py`` rewrites both; ``--check`` exits 1 when a committed page
differs from what the code gives (``make test`` runs it through the tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` after each field of dataclass ``cls`` in its source."""
    source = inspect.getsource(cls)
    out: dict[str, str] = {}
    line_field: dict[int, str] = {}
    for line_no, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if ":" in stripped and not stripped.startswith(("#", "def ", "@", "class ", '"')):
            name = stripped.split(":", 1)[0].strip()
            if name.isidentifier():
                line_field[line_no] = name
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return out


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    return " or ".join(part.strip() for part in str(text).replace("typing.", "").split("|"))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return "none" if value is None else repr(value)


def render_config() -> str:
    from lort.config import RunConfig

    lines = [
        "# Configuration reference",
        "",
        "Generated from the dataclasses of `lort.config` by `python scripts/gen_docs.py`;",
        "do not edit by hand. A run config is YAML with three sections; any key can be",
        "overridden on the command line with `--set section.key=value`. An unknown key, a value",
        "of the wrong type or out of range ends with a one-line error naming the key (exit 2).",
        "",
    ]
    hints = typing.get_type_hints(RunConfig)
    for section in dataclasses.fields(RunConfig):
        cls = hints[section.name]
        comments = _field_comments(cls)
        types = typing.get_type_hints(cls)
        lines += [f"## `{section.name}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            meaning = comments.get(f.name, "").replace("|", "\\|")
            default = _default(f).replace("|", "\\|")
            lines.append(f"| `{section.name}.{f.name}` | `{_type_name(types[f.name])}` | `{default}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def render_methods() -> str:
    from lort.stage2.methods import METHODS

    lines = [
        "# Stage-2 methods",
        "",
        "Generated from the method registry (`lort.stage2.methods`, what `lort methods` prints)",
        "by `python scripts/gen_docs.py`; do not edit by hand. Every method re-trains a",
        "classifier on the same frozen features with the one training loop; a method of your",
        "own is registered with `lort.stage2.register_method` and checked with",
        "`lort.testing.check_method` (see [Stage 2](stage2.md)).",
        "",
        "| method | title | sampler | hyperparameters searched |",
        "|---|---|---|---|",
    ]
    for m in METHODS.values():
        grid = ", ".join(f"{k} ({len(v)})" for k, v in m.grid.items()) or "none"
        lines.append(f"| [`{m.name}`](#{m.name}) | {m.title} | {m.sampler} | {grid} |")
    lines.append("")
    for m in METHODS.values():
        lines += [f"## {m.name}", "", f"**{m.title}**", "", f"Source: {m.source}.", ""]
        lines.append(f"Sampler: {m.sampler}. {'Trains a classifier' if m.trains else 'Post hoc: no training'}.")
        if m.variant_of:
            lines.append(f"A variant of `{m.variant_of}` (counted once in verdicts).")
        lines.append("")
        if m.params:
            lines += ["| hyperparameter | range, defaults, values searched |", "|---|---|"]
            for p in m.params:
                lines.append(f"| `{p.name}` | {p.describe().split(' ', 1)[1]} |")
            lines.append("")
        lines.append("Deviations from the source:")
        lines.append("")
        lines += [f"- {d}" for d in (m.deviations or ("none known",))]
        lines.append("")
    return "\n".join(lines)


PAGES = {"methods.md": render_methods, "configuration.md": render_config}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed page is out of date")
    args = ap.parse_args(argv)
    stale = []
    for name, render in PAGES.items():
        text = render().rstrip("\n") + "\n"
        path = DOCS / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
