"""Fast inference around a loaded model, kept out of the networks: the CPU allocator, thread count, reduced precision,
torch.compile and CUDA graphs. `irtool bench` uses these; so can any engine that runs a model many times.

Everything here works with any model of the model contract (`run(x, routing=None, *, dense=False)`). Imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import IrtoolError
from . import policy

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None  # glibc; musl has no mallopt
    except OSError:
        return None


def tune_cpu_allocator() -> bool:
    """Keep freed memory inside the process instead of handing every large tensor back to the kernel (glibc).

    PyTorch allocates CPU tensors with plain malloc. glibc serves large blocks with fresh mmaps and returns them on
    free, so every intermediate of a forward pass is faulted in and zeroed again by the kernel: on a 2-core machine
    that costs about as much as the convolutions (see benchmarks/README.md). Raising the mmap and trim thresholds
    makes freed blocks reusable. The process keeps its peak memory until it exits, which suits a CLI run.
    Returns True when applied (Linux with glibc), False elsewhere. Idempotent.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    libc = _libc()
    if libc is None:
        return False
    big = 2**31 - 1
    _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, big)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, big))
    return _allocator_tuned


def release_cpu_memory() -> None:
    """Give free heap memory back to the kernel now (glibc `malloc_trim`), e.g. between benchmark cases."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: the most model workers a CPU run splits its threads into: each runs a whole image (or tile) at a time, so each
#: more holds one more image's activations
MAX_CPU_WORKERS = 2


def cpu_split(threads: int, default_threads: int, *, contended: bool = True) -> tuple[int, int]:
    """(model workers, torch threads per worker) for a CPU run given `threads` in all (0: `default_threads`, torch's
    own count, which follows OMP_NUM_THREADS), on a machine where other work competes for the cores (`contended`,
    see `cpu_contended`) or not.

    Contended: two workers restoring different images (or tiles) at one thread each beat one pass on two threads.
    Every op of a pass is a parallel region whose threads wait for each other at its end, and on a machine other jobs
    also use, one descheduled thread stalls the whole pass (measured 2.6x slower than one thread at load 4 on 2
    cores: benchmarks/README.md); independent workers never wait for each other. Threads beyond the workers go to
    each worker's ops.

    Not contended: one worker with every thread. On an idle machine nothing deschedules the threads, and a lone
    large image (a whole-image pass only one worker can run) would leave the other worker's cores idle: a folder with
    a 2 MP photo took 31.8 s split against 16.7 s on one two-thread worker (benchmarks/README.md)."""
    total = max(1, threads or default_threads)
    if not contended:
        return 1, total
    workers = min(MAX_CPU_WORKERS, total)
    return workers, max(1, total // workers)


#: where Linux counts the runnable tasks (`procs_running`)
PROC_STAT = "/proc/stat"


def cpu_contended(samples: int = 5, interval: float = 0.01) -> bool:
    """Whether other work keeps this machine's cores busy right now: another runnable task in every one of a few
    samples of Linux's run queue (`procs_running` in /proc/stat, which counts the sampling thread itself), 10 ms
    apart. The instant count, not the load average: that lags a minute behind, so a run just after another one (a
    script restoring folder after folder) would read its own past load as contention. False where it cannot be read
    (other systems): one worker, as before workers existed."""
    least: int | None = None
    for i in range(samples):
        if i:
            time.sleep(interval)
        try:
            with open(PROC_STAT, encoding="ascii", errors="replace") as stat:
                found = re.search(r"^procs_running\s+(\d+)", stat.read(), re.MULTILINE)
        except OSError:
            return False
        if found is None:
            return False
        others = int(found.group(1)) - 1
        least = others if least is None else min(least, others)
    return least is not None and least >= 1


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of an explicit precision name (fp32, bf16, fp16; see `policy`); IrtoolError for others."""
    return policy.dtype_of(precision, label=f"precision {precision!r}")


def autocast(device: torch.device, precision: str, *, cache: bool = True) -> ContextManager:
    """Mixed precision for an explicit `precision` on `device` as `policy` decides it: convolutions and matmuls
    in bf16/fp16, normalisations and softmax in fp32 (torch.autocast's lists); fp32 runs as is. `cache=False` for
    CUDA graph capture."""
    precision_dtype(precision)  # only explicit names: a benchmark row measures one precision
    dtype, _notes = policy.resolve_precision(precision, device)
    return policy.autocast(device, dtype, cache=cache)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device` in eval mode without gradients. On CUDA the conv weights also go channels-last, the
    layout the activations use, so cuDNN need not convert them on every call (not done on CPU, where oneDNN
    reorders weights itself and it measured no faster)."""
    model = model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; stubs lack it
    return model


def compile_run(model: nn.Module, *, mode: str | None = None) -> Callable[..., Any]:
    """`model.run` compiled by torch.compile for fixed shapes (dynamic=False: one graph per input size, as in a
    benchmark or a tiled run). MoCE-IR's per-layer expert choice is a graph break; the trunk between choices is
    compiled. The first call per shape compiles (minutes on a small CPU); later calls are fast.

    Inductor freezes the weights into the graphs (constant folding, and on CPUs oneDNN weight prepacking, which is
    what makes compiling pay there: measured 1.08x faster than eager instead of 1.6x slower): recompile after
    changing the weights. Freezing is an inductor setting of the whole process (`options={"freezing": True}` was
    measured to have no effect).
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # Each (resolution level, expert) pair resumes a graph with its own shapes: allow more than the default 8.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
    inductor_config.freezing = True
    from ..archs.spec import restoring

    return torch.compile(restoring(model).run, dynamic=False, mode=mode)


class CudaGraphRun:
    """`model.run` for one input shape, replayed from a captured CUDA graph (no per-kernel launch cost).

    Only forwards whose control flow does not depend on values computed on the GPU can be captured: dense experts,
    or an imposed routing (its experts are known on the host) that is the same for every image of the batch. The
    returned result lives in static buffers that the next call overwrites: copy what you keep.
    """

    def __init__(
        self,
        model: nn.Module,
        example: Tensor,
        *,
        routing: Any = None,
        dense: bool = False,
        precision: str = "fp32",
        warmup: int = 3,
    ) -> None:
        if example.device.type != "cuda":
            raise IrtoolError("CUDA graphs need a CUDA device")
        from ..archs.spec import restoring, spec_of

        if routing is None and not dense and spec_of(model).capabilities.routing is not None:
            raise IrtoolError(
                "CUDA graphs need dense experts or an imposed routing: the router's own choice is read on the host"
            )
        if routing is not None:
            host = getattr(routing, "host_experts", None)
            host = routing.experts.cpu() if host is None else host
            if not bool((host == host[:1]).all()):
                raise IrtoolError("CUDA graphs need the same imposed experts for every image of the batch")
            routing = routing.to(example.device)
        net = restoring(model)
        self.static_input: Tensor = example.clone()
        self._run = lambda: net.run(self.static_input, routing, dense=dense)
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side), torch.inference_mode(), autocast(example.device, precision, cache=False):
            for _ in range(warmup):  # lets cuDNN pick its algorithms before capture
                self._run()
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode(), autocast(example.device, precision, cache=False):
            self.static_result = self._run()

    def __call__(self, x: Tensor) -> Any:
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_result
