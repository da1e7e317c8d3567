"""A stage-2 method's hyperparameters, declared once by the method: type, range, lort's
default, the source's published default and the values searched on validation.

Everything else — the command line, the YAML ``stage2`` section, the estimators, the
sweeps and ``compare`` — asks the method (:meth:`lort.stage2.methods.Method.settings`)
rather than knowing a parameter itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LortError


@dataclass(frozen=True)
class Param:
    """One hyperparameter. ``kind`` is ``float`` or ``tuple`` (a tuple of floats, each in
    the range). ``default`` is used when nothing is searched (no validation data);
    ``source_default`` is the value the method's publication or public code uses (None
    where it gives none); ``grid`` the values searched on validation."""

    name: str
    default: Any
    grid: tuple = ()
    source_default: Any = None
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    doc: str = ""

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return "any value"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def _in_range(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))

    def check(self, value: Any, owner: str) -> Any:
        """``value`` converted to the parameter's kind; a LortError naming the method,
        the parameter and its range otherwise."""
        where = f"{owner}: {self.name}"
        if self.kind is tuple:
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise LortError(f"{where} takes a pair of numbers such as {self.default!r}, got {value!r}")
            items = tuple(self._number(v, where) for v in value)
            if len(items) != len(self.default):
                raise LortError(f"{where} takes {len(self.default)} numbers, got {len(items)}")
            return items
        return self._number(value, where)

    def _number(self, value: Any, where: str):
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise LortError(f"{where} must be a number in {self.range_text()}, got {value!r}") from None
        value = float(value)
        if not self._in_range(value):
            raise LortError(f"{where} must lie in {self.range_text()}, got {value!r}")
        return value

    def values(self, given: Any, owner: str) -> list:
        """A fixed value or a list of values to search, checked, as a list. For a tuple
        parameter a value is a sequence of numbers and a search is a sequence of those."""
        single = (
            not isinstance(given, list | tuple)
            if self.kind is not tuple
            else isinstance(given, list | tuple) and all(not isinstance(v, list | tuple) for v in given)
        )
        values = [given] if single else list(given)
        if not values:
            raise LortError(f"{owner}: {self.name} is an empty list; give a value or a list of values to search")
        return [self.check(v, owner) for v in values]

    def describe(self) -> str:
        parts = [f"{self.name} in {self.range_text()}", f"default {self.default!r}"]
        if self.source_default is not None:
            parts.append(f"source {self.source_default!r}")
        if self.grid:
            parts.append(f"searched {list(self.grid)}")
        return ", ".join(parts)
