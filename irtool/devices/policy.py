"""Where a model runs and at what precision: the one rule that restore, eval, bench, calibrate, video and train follow.

Devices (`resolve_device`): "auto" (or None) picks CUDA, then MPS, then the CPU; a named device ("cpu", "cuda",
"cuda:1", "mps") is checked to exist on this machine, and a device that does not is an IrtoolError naming it.

Precisions (`resolve_precision`): what a `--precision` name means on a device. Reduced precision is always
torch.autocast (matmuls and convolutions in bf16/fp16, normalisations and softmax in fp32); the weights stay fp32.
(Under CPU bf16 autocast MoCE-IR runs a bf16 copy of itself on its prepacked convs: `moce_ir._cpu_bf16_autocast`.)

    name   CPU                          CUDA                                    MPS
    fp32   fp32                         fp32                                    fp32
    bf16   bf16 autocast; a note where  bf16 autocast; a GPU without bf16 runs  bf16 autocast
           the CPU lacks bf16           fp32 and says so
           instructions (slower there)
    fp16   fp16 autocast, with a note   fp16 autocast                           fp16 autocast
           that it is slow there
    auto   fp32                         bf16 when the GPU has it, else fp32     fp32

The rule a demanding user expects: an explicit request is honoured wherever the hardware can do it at all, and
whatever irtool does differently from what was asked is said in a note, never silently. So fp16 on a CPU runs (it is
correct there, only slow: no fp16 kernels) with a note naming the faster choices, instead of refusing or quietly
substituting bf16; bf16 on a GPU without bf16 cannot run and falls back to fp32 with a note. `auto` is the fast,
safe choice: bf16 where the GPU does it natively, fp32 elsewhere (CPU autocast and MPS reduced precision are not
reliably faster than fp32).

Commands accept the names that make sense for them (`check_precision`): restore, video and calibrate take all four;
eval and bench measure a named precision (no `auto`); training takes auto, bf16 and fp32 (fp16 training would need
loss scaling).

Imports nothing heavy at import time (irtool.restoration.planning checks names without torch); torch is imported
where a device or dtype is made.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ..errors import IrtoolError

if TYPE_CHECKING:
    import torch

#: every precision name, `auto` first
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: the names that say exactly what runs (eval and bench measure one of these)
EXPLICIT_PRECISIONS = ("fp32", "bf16", "fp16")
#: what training accepts: no fp16 (it would need loss scaling)
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")

FP16_ON_CPU = "fp16 on CPU is very slow (no fp16 kernels); bf16 or fp32 is faster"
NO_BF16 = "this GPU has no bf16; running in fp32"
BF16_ON_CPU = (
    "this CPU has no bf16 instructions (AMX or AVX512-BF16): bf16 runs no faster than fp32 here, and less exactly"
)


CPUINFO = "/proc/cpuinfo"


def cpu_bf16_instructions() -> bool | None:
    """Whether this CPU computes in bf16 natively (Intel AMX, AVX512-BF16), from Linux's /proc/cpuinfo; None where
    that cannot be read (other systems). Without them oneDNN converts, and bf16 measured slower than fp32
    (benchmarks/README.md); with AMX it measured 1.2-1.6x faster."""
    return _bf16_flags(CPUINFO)


@functools.lru_cache(maxsize=4)
def _bf16_flags(path: str) -> bool | None:
    """`cpu_bf16_instructions` for the cpuinfo file at `path`, read once: precisions are resolved on every
    `speed.autocast`, inside benchmark timings."""
    try:
        with open(path, encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        return None
    return None


def check_precision(precision: str, allowed: Sequence[str] = PRECISIONS, *, label: str | None = None) -> str:
    """`precision` when it is one of `allowed`, else the one-line IrtoolError naming the choices. label: how the
    message names the value (default "--precision NAME", the CLI flag)."""
    if precision not in allowed:
        raise IrtoolError(f"{label or f'--precision {precision}'}: one of {', '.join(allowed)}")
    return precision


def _cuda_has_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, list[str]]:
    """The autocast dtype for a precision name on a device (None: plain fp32), and the notes to tell the user about
    the choice (see the module docstring's table). An unknown name is an IrtoolError."""
    import torch

    check_precision(precision)
    notes: list[str] = []
    if precision == "fp32":
        return None, notes
    if precision == "auto":
        return (torch.bfloat16 if device.type == "cuda" and _cuda_has_bf16() else None), notes
    if precision == "bf16":
        if device.type == "cuda" and not _cuda_has_bf16():
            notes.append(NO_BF16)
            return None, notes
        if device.type == "cpu" and cpu_bf16_instructions() is False:
            notes.append(BF16_ON_CPU)
        return torch.bfloat16, notes
    if device.type == "cpu":
        notes.append(FP16_ON_CPU)
    return torch.float16, notes


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of what ran: "fp32" for None (no autocast) or float32, else "bf16" / "fp16"."""
    import torch

    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "fp32"


def dtype_of(precision: str, *, label: str | None = None) -> torch.dtype:
    """The floating-point type an explicit precision name stands for (fp32 -> float32); label as for
    `check_precision`."""
    import torch

    check_precision(precision, EXPLICIT_PRECISIONS, label=label)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None, *, cache: bool = True) -> AbstractContextManager:
    """torch.autocast for a resolved dtype on `device`; nothing for None or float32 (plain fp32).
    `cache=False` for CUDA graph capture."""
    import torch

    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/"auto": CUDA, then MPS, then CPU. Otherwise the named device, checked to exist."""
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise IrtoolError(f"--device {device}: not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IrtoolError(f"--device {device}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise IrtoolError(f"--device {device}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not _mps_available():
        raise IrtoolError(f"--device {device}: MPS is not available on this machine")
    return dev


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


__all__ = [
    "PRECISIONS",
    "EXPLICIT_PRECISIONS",
    "TRAIN_PRECISIONS",
    "check_precision",
    "resolve_precision",
    "precision_name",
    "dtype_of",
    "autocast",
    "resolve_device",
]
