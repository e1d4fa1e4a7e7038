"""devices.policy: the one precision table (per device type) and device choice, and that every command follows it.

CUDA and MPS rows are checked with torch.device("cuda") / ("mps") objects on any machine: the rule reads the device's
type and, for bf16 on CUDA, whether the GPU has bf16 (monkeypatched here)."""

from __future__ import annotations

import pytest
import torch

from irtool.devices import policy
from irtool.errors import IrtoolError

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture(params=[True, False], ids=["gpu-has-bf16", "gpu-without-bf16"])
def bf16_gpu(request, monkeypatch):
    monkeypatch.setattr(policy, "_cuda_has_bf16", lambda: request.param)
    return request.param


@pytest.mark.parametrize("native", [True, False, None], ids=["cpu-has-bf16", "cpu-without-bf16", "cpu-unknown"])
def test_cpu_table(native, monkeypatch):
    monkeypatch.setattr(policy, "cpu_bf16_instructions", lambda: native)
    assert policy.resolve_precision("fp32", CPU) == (None, [])
    assert policy.resolve_precision("auto", CPU) == (None, [])  # bf16 changes the numbers: only when asked
    assert policy.resolve_precision("bf16", CPU) == (BF16, [] if native is not False else [policy.BF16_ON_CPU])
    assert policy.resolve_precision("fp16", CPU) == (FP16, [policy.FP16_ON_CPU])  # runs, and says it is slow


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx512f avx512_bf16 amx_tile", True), ("fpu avx2 amx_bf16", True), ("fpu sse2 avx2 avx512f", False)],
)
def test_cpu_bf16_instructions_read_from_cpuinfo(flags, expected, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(policy, "CPUINFO", str(cpuinfo))
    assert policy.cpu_bf16_instructions() is expected
    monkeypatch.setattr(policy, "CPUINFO", str(tmp_path / "absent"))
    assert policy.cpu_bf16_instructions() is None


def test_mps_table():
    assert policy.resolve_precision("fp32", MPS) == (None, [])
    assert policy.resolve_precision("auto", MPS) == (None, [])
    assert policy.resolve_precision("bf16", MPS) == (BF16, [])
    assert policy.resolve_precision("fp16", MPS) == (FP16, [])


def test_cuda_table(bf16_gpu):
    assert policy.resolve_precision("fp32", CUDA) == (None, [])
    assert policy.resolve_precision("fp16", CUDA) == (FP16, [])
    assert policy.resolve_precision("auto", CUDA) == ((BF16 if bf16_gpu else None), [])
    expected = (BF16, []) if bf16_gpu else (None, [policy.NO_BF16])
    assert policy.resolve_precision("bf16", CUDA) == expected
    assert policy.resolve_precision("bf16", torch.device("cuda:1")) == expected


def test_names_and_errors():
    assert policy.PRECISIONS[0] == "auto" and set(policy.EXPLICIT_PRECISIONS) == {"fp32", "bf16", "fp16"}
    assert [policy.precision_name(d) for d in (None, torch.float32, BF16, FP16)] == ["fp32", "fp32", "bf16", "fp16"]
    assert [policy.dtype_of(p) for p in ("fp32", "bf16", "fp16")] == [torch.float32, BF16, FP16]
    with pytest.raises(IrtoolError, match=r"^--precision fp8: one of auto, fp32, bf16, fp16$"):
        policy.resolve_precision("fp8", CPU)
    with pytest.raises(IrtoolError, match=r"^--precision auto: one of fp32, bf16, fp16$"):
        policy.check_precision("auto", policy.EXPLICIT_PRECISIONS)
    with pytest.raises(IrtoolError, match=r"^precision 'auto': one of"):
        policy.dtype_of("auto", label="precision 'auto'")


def test_autocast_contexts():
    with policy.autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with policy.autocast(CPU, torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with policy.autocast(CPU, BF16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16


def test_devices():
    assert policy.resolve_device(None).type in ("cuda", "mps", "cpu")
    assert policy.resolve_device("auto") == policy.resolve_device(None)
    assert policy.resolve_device("cpu") == CPU
    with pytest.raises(IrtoolError, match="not a device name"):
        policy.resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(IrtoolError, match="CUDA is not available"):
            policy.resolve_device("cuda")


def test_every_command_follows_the_one_rule():
    """restore/video/calibrate (the engine), eval, bench (runtime) and the loader use policy's functions and names."""
    from irtool import loading
    from irtool.devices import speed
    from irtool.evaluation import evaluate
    from irtool.restoration import engine, planning

    assert engine.policy is policy  # the engine reads the rules from policy itself, with no copies of its names
    assert loading.resolve_device is policy.resolve_device
    assert evaluate.PRECISIONS == policy.EXPLICIT_PRECISIONS
    with pytest.raises(IrtoolError, match="--precision fp8"):
        planning.RestoreOptions(precision="fp8").check()
    with pytest.raises(IrtoolError, match="precision 'auto'"):
        speed.precision_dtype("auto")
    # the same fp16-on-CPU behaviour everywhere: it runs, with the note
    with speed.autocast(CPU, "fp16"):
        assert torch.get_autocast_dtype("cpu") == FP16


def test_eval_runs_fp16_on_cpu_with_the_note():
    """eval used to refuse fp16 off CUDA; under the one rule it runs and the dataset report carries the note."""
    from irtool.evaluation import evaluate

    class Tiny(torch.nn.Module):
        arch = "tiny"

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

    model = Tiny()
    dtype, notes = evaluate._check_run(model, evaluate.EvalOptions(precision="fp16"), CPU)
    assert dtype == FP16 and notes == [policy.FP16_ON_CPU]
    with pytest.raises(IrtoolError, match="--precision auto"):
        evaluate._check_run(model, evaluate.EvalOptions(precision="auto"), CPU)
