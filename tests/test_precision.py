"""amp: auto picks bf16 only where the hardware has native bf16, and says why."""

from __future__ import annotations

import pytest
import torch

from lort.errors import LortError
from lort.runtime import precision as P


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU's bf16 flags as a given machine would report them."""

    def set_flags(avx512_bf16: bool, amx: bool, cap: str | None = None):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)

    return set_flags


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "cap", "expected"),
    [
        (False, False, None, None),  # AVX-512 without BF16/AMX (Skylake..Ice Lake): oneDNN emulates bf16
        (True, False, None, torch.bfloat16),  # Cooper Lake, Zen 4
        (True, True, None, torch.bfloat16),  # Sapphire Rapids and later
        (True, True, "AVX512_CORE", None),  # oneDNN capped below its bf16 kernels
        (True, True, "avx512_core_amx", torch.bfloat16),
        (True, True, "AVX2", None),
    ],
)
def test_auto_takes_bf16_only_with_native_support(cpu_flags, avx512_bf16, amx, cap, expected):
    cpu_flags(avx512_bf16, amx, cap)
    choice = P.choose_precision("auto", "cpu")
    assert choice.dtype is expected
    assert ("has native bf16" in choice.reason) == (expected is not None)
    assert choice.to_dict()["dtype"] == ("bf16" if expected else "fp32")


def test_explicit_choices_are_kept_and_fp16_is_for_cuda_only(cpu_flags):
    cpu_flags(False, False)
    assert P.choose_precision("none", "cpu").dtype is None
    assert P.choose_precision("bf16", "cpu").dtype is torch.bfloat16  # asked for: honoured, even if emulated
    assert P.choose_precision("fp16", "cpu").dtype is None
    assert P.choose_precision("auto", "meta").dtype is None
    with pytest.raises(LortError, match="amp must be one of none, auto, bf16, fp16"):
        P.choose_precision("fp8", "cpu")


def test_capability_is_described_for_benchmarks(cpu_flags):
    cpu_flags(False, False, "AVX512_CORE")
    cap = P.cpu_capability()
    text = cap.describe()
    assert "bf16 flags: none" in text and "ONEDNN_MAX_CPU_ISA=AVX512_CORE" in text and "native bf16: no" in text
    assert cap.to_dict()["native_bf16"] is False


def test_autocast_context_follows_the_choice(cpu_flags):
    cpu_flags(True, True)
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with P.autocast(P.choose_precision("auto", "cpu"), "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with P.autocast(P.choose_precision("none", "cpu"), "cpu"):
        assert (x @ w).dtype == torch.float32


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_stage2_flushes_subnormals_inside_and_restores_the_callers_setting(caller_flushes):
    from lort.stage2.heads import LinearHead
    from lort.stage2.schedule import Schedule
    from lort.stage2.trainer import fit_head
    from lort.testing.oracles import grouped_cross_entropy

    torch.set_flush_denormal(caller_flushes)
    try:
        assert P._flushing_denormals() == caller_flushes
        seen = []

        def loss(logits, y, epoch):
            seen.append(P._flushing_denormals())
            return grouped_cross_entropy(logits, y)

        x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
        fit_head(LinearHead(torch.zeros(2, 4), torch.zeros(2)), x, y, loss, Schedule(epochs=1, batch_size=4))
        assert seen == [True, True]
        assert P._flushing_denormals() == caller_flushes
    finally:
        torch.set_flush_denormal(False)


def test_tf32_matmuls_only_on_gpus_that_have_them_and_restores_the_setting(monkeypatch):
    import torch

    from lort.runtime.precision import tf32_matmuls

    before = torch.backends.cuda.matmul.allow_tf32
    with tf32_matmuls("cpu") as used:
        assert used is False and torch.backends.cuda.matmul.allow_tf32 == before
    for capability, expected in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        torch.backends.cuda.matmul.allow_tf32 = False
        with tf32_matmuls("cuda") as used:
            assert used is expected and torch.backends.cuda.matmul.allow_tf32 is expected
        assert torch.backends.cuda.matmul.allow_tf32 is False  # restored
    torch.backends.cuda.matmul.allow_tf32 = before


def test_compile_auto_compiles_long_cpu_runs_only_and_says_why(monkeypatch):
    from lort.errors import LortError
    from lort.runtime import compilation as C

    monkeypatch.setattr(C, "cpp_compiler", lambda: "g++")
    long_run = C.AUTO_MIN_STEPS
    assert C.choose_compile("auto", "cpu", long_run).enabled
    short = C.choose_compile("auto", "cpu", long_run - 1)
    assert not short.enabled and f"{long_run - 1} training steps" in short.reason
    assert not C.choose_compile("auto", "meta", long_run).enabled  # not measured off the CPU
    assert C.choose_compile(True, "cpu", 1).enabled  # asked for: honoured
    assert not C.choose_compile(False, "cpu", long_run).enabled
    monkeypatch.setattr(C, "cpp_compiler", lambda: None)
    no_cxx = C.choose_compile("auto", "cpu", long_run)
    assert not no_cxx.enabled and "C++ compiler" in no_cxx.reason
    assert C.choose_compile("auto", "cpu", long_run).to_dict()["setting"] == "auto"
    for bad in ("yes", 1, 0, None):
        with pytest.raises(LortError, match="stage1.compile must be auto, true or false"):
            C.choose_compile(bad, "cpu", long_run)


@pytest.mark.parametrize("value", ["maybe", "1", "2"])
def test_a_bad_compile_setting_is_a_config_error(value):
    from lort.config import load_config
    from lort.errors import LortError

    with pytest.raises(LortError, match="stage1.compile"):
        load_config(None, [f"stage1.compile={value}"])
    assert load_config(None, ["stage1.compile=false"]).stage1.compile is False
    assert load_config(None, []).stage1.compile == "auto"
