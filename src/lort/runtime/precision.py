"""Which floating-point precision a forward/backward pass runs in, and why.

``amp`` is one of ``none`` (fp32), ``auto``, ``bf16`` or ``fp16`` (CUDA only). ``auto`` picks
bf16 only where the hardware has native bf16 arithmetic, which is where it is faster:

* CPU: the instruction-set flags ``amx_bf16`` or ``avx512_bf16`` (read by PyTorch's cpuinfo),
  unless ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below its bf16 kernels. A CPU with AVX-512 but
  neither flag is "bf16 supported" for oneDNN — it emulates bf16 — and runs a ResNet-32 at
  about a third of its fp32 speed, so ``auto`` keeps fp32 there.
* CUDA: compute capability 8.0 or newer (Ampere and later); older GPUs emulate bf16.

The choice and its reason are recorded in every run's ``environment.json`` and feature file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import asdict, dataclass

import torch

AMP_MODES = ("none", "auto", "bf16", "fp16")

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which its bf16 kernels are native.
_NATIVE_BF16_ISAS = {
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
}


@dataclass(frozen=True)
class CpuCapability:
    """What the CPU offers for deep-learning arithmetic, as printed beside every speed figure."""

    model: str
    isa: str  # PyTorch's dispatch level: DEFAULT, AVX2, AVX512, ...
    avx512_bf16: bool
    amx_bf16: bool
    onednn_max_cpu_isa: str | None

    @property
    def native_bf16(self) -> bool:
        cap = self.onednn_max_cpu_isa
        if cap is not None and cap.upper() not in _NATIVE_BF16_ISAS:
            return False
        return self.avx512_bf16 or self.amx_bf16

    def describe(self) -> str:
        flags = [name for name, on in (("avx512_bf16", self.avx512_bf16), ("amx_bf16", self.amx_bf16)) if on]
        text = f"{self.model}; ISA {self.isa}; bf16 flags: {', '.join(flags) or 'none'}"
        if self.onednn_max_cpu_isa:
            text += f"; ONEDNN_MAX_CPU_ISA={self.onednn_max_cpu_isa}"
        return text + f"; native bf16: {'yes' if self.native_bf16 else 'no'}"

    def to_dict(self) -> dict:
        return asdict(self) | {"native_bf16": self.native_bf16}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flag(name: str) -> bool:
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(probe()) if probe is not None else False


def cpu_capability() -> CpuCapability:
    return CpuCapability(
        model=_cpu_model(),
        isa=torch.backends.cpu.get_cpu_capability(),
        avx512_bf16=_cpu_flag("avx512_bf16"),
        amx_bf16=_cpu_flag("amx_tile"),
        onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )


@dataclass(frozen=True)
class Precision:
    """The resolved precision: ``dtype`` None means fp32 (no autocast)."""

    amp: str
    device: str
    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def to_dict(self) -> dict:
        return {"amp": self.amp, "device": self.device, "dtype": self.name, "reason": self.reason}


def choose_precision(amp: str, device: torch.device | str) -> Precision:
    """Resolve ``amp`` on ``device`` to a dtype with the reason for it."""
    device = torch.device(device)
    if amp not in AMP_MODES:
        from ..errors import LortError

        raise LortError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")

    def chose(dtype, reason):
        return Precision(amp, device.type, dtype, reason)

    if amp == "none":
        return chose(None, "amp: none asks for fp32")
    if device.type == "cuda":
        if amp == "fp16":
            return chose(torch.float16, "amp: fp16 asks for fp16 on CUDA")
        if amp == "bf16":
            return chose(torch.bfloat16, "amp: bf16 asks for bf16")
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return chose(torch.bfloat16, f"CUDA compute capability {major}.{minor} has native bf16")
        return chose(None, f"CUDA compute capability {major}.{minor} has no native bf16 (emulated): fp32 is faster")
    if device.type != "cpu":
        return chose(None, f"no autocast rule for device {device.type}: fp32")
    if amp == "fp16":
        return chose(None, "amp: fp16 is for CUDA only: fp32 on the CPU")
    if amp == "bf16":
        return chose(torch.bfloat16, "amp: bf16 asks for bf16")
    cap = cpu_capability()
    if cap.native_bf16:
        return chose(torch.bfloat16, f"CPU has native bf16 ({cap.describe()})")
    return chose(None, f"CPU has no native bf16, where bf16 is emulated and slower ({cap.describe()}): fp32")


def autocast(precision: Precision | None, device: torch.device | str):
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision is None or precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=precision.dtype)


def _flushing_denormals() -> bool:
    """Whether the CPU now flushes subnormal floats to zero (there is no getter in torch:
    a subnormal input multiplied by one reads as zero exactly when flushing is on)."""
    return float(torch.tensor([1e-40], dtype=torch.float32, device="cpu").mul(1.0)[0]) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero inside the block, then restore the caller's setting.

    Stage 2 fine-tunes converged classifiers: gradients and momentum become tiny, and x86
    CPUs compute on subnormal numbers about ten times slower. Values below 1.2e-38 are
    far beneath anything that changes a classifier's logits."""
    before = _flushing_denormals()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(before)


def flushing_denormals(fn):
    """Decorator: run ``fn`` inside :func:`flush_denormals`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with flush_denormals():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def tf32_matmuls(device):
    """Inside the block, float32 matrix products on a CUDA device of capability 8.0 or
    later (Ampere, Hopper) run on its TF32 tensor cores; the caller's setting is restored.
    On the CPU and older GPUs nothing changes. Stage 2's classifiers train in float32;
    TF32 keeps float32's range with a 10-bit mantissa in the products only."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        yield False
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
