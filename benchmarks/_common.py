"""What every benchmark script shares: where the data is, and one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lort.errors import LortError


def default_root() -> str | None:
    """``LORT_DATA`` if set (the readers take it), else ``../shared/data`` beside the repository."""
    if os.environ.get("LORT_DATA"):
        return None
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def run_main(main) -> None:
    """Run a benchmark's ``main``; bad input ends in one line and exit code 2, never a traceback."""
    try:
        main()
    except LortError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
