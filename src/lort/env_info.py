"""What produced an output: library versions, machine, seed — recorded in every run folder."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import torch

from . import __version__


def environment(seed: int | None = None) -> dict:
    return {
        "lort": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": seed,
        "command": " ".join(sys.argv),
    }
