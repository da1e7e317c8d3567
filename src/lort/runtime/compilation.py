"""Whether stage 1 runs its training steps through ``torch.compile``.

``stage1.compile: auto`` (the default) compiles only where it pays: on a CPU with a C++
compiler that inductor can use, for a run of at least :data:`AUTO_MIN_STEPS` steps, where
the one-off cost of compiling the training step is repaid by faster steps (fused
batch-norm, ReLU and residual kernels); the measured costs and gains are in
``docs/stage1.md`` and ``results/speed/``. A short run such as the demo stays eager. On
CUDA ``auto`` does not compile (not yet measured there). ``true`` compiles anyway,
``false`` never. The choice and its reason are recorded like the precision's.
"""

from __future__ import annotations

import dataclasses

import torch

AUTO_MIN_STEPS = 10_000


def valid_compile_setting(setting) -> bool:
    """``auto``, ``true`` or ``false`` (YAML booleans; not 0 or 1)."""
    return setting == "auto" or isinstance(setting, bool)


@dataclasses.dataclass(frozen=True)
class CompileChoice:
    setting: bool | str
    enabled: bool
    reason: str

    def to_dict(self) -> dict:
        return {"setting": self.setting, "enabled": self.enabled, "reason": self.reason}


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU, or None where it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # no compiler, or an inductor without this helper
        return None


def choose_compile(setting: bool | str, device: torch.device | str, steps: int) -> CompileChoice:
    """Resolve ``stage1.compile`` for a run of ``steps`` training steps on ``device``."""
    if not valid_compile_setting(setting):
        from ..errors import LortError

        raise LortError(f"stage1.compile must be auto, true or false, got {setting!r}")
    if setting is True:
        return CompileChoice(setting, True, "stage1.compile: true asks for torch.compile")
    if setting is False:
        return CompileChoice(setting, False, "stage1.compile: false")
    device = torch.device(device)
    if device.type != "cpu":
        return CompileChoice(setting, False, f"auto compiles on the CPU only (not measured on {device.type})")
    if steps < AUTO_MIN_STEPS:
        return CompileChoice(
            setting,
            False,
            f"{steps} training steps are fewer than {AUTO_MIN_STEPS:,}, below which compiling "
            "(half a minute to a minute and a half here) is not sure to pay",
        )
    cxx = cpp_compiler()
    if cxx is None:
        return CompileChoice(setting, False, "no C++ compiler found for torch.compile's CPU code")
    return CompileChoice(
        setting, True, f"{steps} training steps on the CPU, at least {AUTO_MIN_STEPS:,}; C++ compiler {cxx}"
    )


def compiled(model: torch.nn.Module, choice: CompileChoice) -> torch.nn.Module:
    """``model`` compiled where ``choice`` says so, else ``model`` itself. Where ``auto``
    chose to compile (the user did not ask), a compilation that fails falls back to eager
    (``torch._dynamo.config.suppress_errors``) instead of stopping the run."""
    if not choice.enabled:
        return model
    if choice.setting == "auto":
        from torch._dynamo import config as dynamo_config

        dynamo_config.suppress_errors = True
    return torch.compile(model)
