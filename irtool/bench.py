"""`irtool bench`: latency, throughput and peak memory of a restoration model per image size, batch, precision, expert
mode and code path, with an optional router / trunk / experts time breakdown.

Any irtool model works (MoCE-IR's, LoRA-IR's, BioIR's): what it can do comes from its spec's capabilities, which add
rows: the reference path (`run(x, reference=True)`, the plain formulation, to show what the fast paths gain), a
uniform routing (one expert everywhere, to show each expert's cost) and the profile parts (modules per part for the
breakdown). A network without routing (BioIR) has no experts to split into sparse and dense: it is measured in one
mode, `none`, whatever --experts asks, and the report's notes say so. Inputs are random images of each size, reflect-padded to the model's size multiple. Timings use CUDA events on GPUs and `perf_counter` on CPUs, after warm-up runs; each row
also checks its output against the fp32 sparse fast-path output of the same input. Imports torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .archs.spec import RoutingRecord, restoring, spec_of
from .devices import speed
from .errors import IrtoolError, first_line
from .restoration.tiling import pad_to_multiple

EXPERT_MODES = ("sparse", "dense")  # plus "e<N>": expert N imposed in every layer
#: the one mode of a network without routing (no experts, so nothing to run sparsely or densely)
NO_EXPERTS = "none"
PATHS = ("fast", "reference")


# --------------------------------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class BenchPlan:
    """The grid to measure: every combination of sizes x batches x paths x precisions x expert modes."""

    sizes: tuple[tuple[int, int], ...] = ((256, 256),)  #: (height, width)
    batches: tuple[int, ...] = (1,)
    precisions: tuple[str, ...] = ("fp32",)
    experts: tuple[str, ...] = ("sparse", "dense")
    paths: tuple[str, ...] = ("fast",)
    compile: bool = False
    cuda_graphs: bool = False
    warmup: int = 2
    runs: int = 10
    breakdown: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for p in self.precisions:
            speed.precision_dtype(p)
        for e in self.experts:
            if e not in EXPERT_MODES and not (e.startswith("e") and e[1:].isdigit()):
                raise IrtoolError(f"--experts {e}: one of sparse, dense, or e0, e1, ... (one expert in every layer)")
        for p in self.paths:
            if p not in PATHS:
                raise IrtoolError(f"--path {p}: one of {', '.join(PATHS)}")
        if self.runs < 1 or self.warmup < 0:
            raise IrtoolError("--runs must be at least 1 and --warmup at least 0")
        if any(h < 1 or w < 1 for h, w in self.sizes) or any(b < 1 for b in self.batches):
            raise IrtoolError("sizes and batch sizes must be positive")


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'256,512,3840x2160' -> ((256, 256), (512, 512), (2160, 3840)): N is N x N, WxH is width x height."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "x" in part.lower():
                w, h = (int(v) for v in part.lower().split("x"))
            else:
                w = h = int(part)
        except ValueError:
            raise IrtoolError(f"--sizes {part}: write N (square) or WxH, e.g. 256,512,3840x2160") from None
        sizes.append((h, w))
    if not sizes:
        raise IrtoolError("--sizes: give at least one size")
    return tuple(sizes)


def parse_list(text: str, option: str, cast: Callable[[str], Any] = str) -> tuple:
    try:
        values = tuple(cast(p.strip()) for p in text.split(",") if p.strip())
    except ValueError:
        raise IrtoolError(f"{option} {text}: a comma-separated list, e.g. 1,4") from None
    if not values:
        raise IrtoolError(f"{option}: give at least one value")
    return values


# --------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class BenchRow:
    height: int
    width: int
    batch: int
    path: str
    precision: str
    experts: str
    compiled: bool = False
    cuda_graph: bool = False
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    megapixels_per_s: float | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    #: "cuda-allocator" (weights + activations, torch's peak) or "rss" (whole process, includes the model)
    memory_kind: str | None = None
    compile_s: float | None = None
    #: experts chosen per MoCE layer, counted over the batch: {"e0": n, ...}
    routing: dict[str, int] | None = None
    #: against the fp32 fast-path output of the same input with the model's own routing (None for imposed experts)
    max_abs_diff: float | None = None
    psnr_db: float | None = None
    #: ms per forward for each part ({"router", "experts", "trunk"}), from a separate synchronised pass
    breakdown_ms: dict[str, float] | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        extra = "+compile" if self.compiled else "+graph" if self.cuda_graph else ""
        return f"{self.width}x{self.height} b{self.batch} {self.path} {self.precision} {self.experts}{extra}"


@dataclass
class BenchReport:
    device: str
    device_name: str
    torch_version: str
    threads: int
    allocator_tuned: bool
    model: dict[str, Any]
    load_average: tuple[float, float] | None = None  #: 1-min load before and after (CPU runs share the machine)
    rows: list[BenchRow] = field(default_factory=list)
    #: what the plan could not do as asked for this model (e.g. no sparse/dense split for a network without routing)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Ratios between rows that differ in one setting: dense / sparse, reference / fast, per size and batch."""

        def median(**key: Any) -> float | None:
            for r in self.rows:
                if r.median_ms is not None and all(getattr(r, k) == v for k, v in key.items()):
                    return r.median_ms
            return None

        out: dict[str, Any] = {
            "dense_over_sparse": {},
            "reference_over_fast": {},
            "eager_over_compiled": {},
            "eager_over_graph": {},
        }
        for r in self.rows:
            if r.median_ms is None:
                continue
            if r.compiled or r.cuda_graph:
                eager = median(
                    height=r.height,
                    width=r.width,
                    batch=r.batch,
                    precision=r.precision,
                    path=r.path,
                    experts=r.experts,
                    compiled=False,
                    cuda_graph=False,
                )
                if eager:
                    key = "eager_over_compiled" if r.compiled else "eager_over_graph"
                    tag = f"{r.width}x{r.height} b{r.batch} {r.precision} {r.experts}"
                    out[key][tag] = round(eager / r.median_ms, 3)
                continue
            tag = f"{r.width}x{r.height} b{r.batch} {r.precision}"
            if r.path == "fast" and r.experts == "dense":
                sparse = median(
                    height=r.height,
                    width=r.width,
                    batch=r.batch,
                    precision=r.precision,
                    path="fast",
                    experts="sparse",
                    compiled=False,
                    cuda_graph=False,
                )
                if sparse:
                    out["dense_over_sparse"][tag] = round(r.median_ms / sparse, 3)
            if r.path == "reference":
                fast = median(
                    height=r.height,
                    width=r.width,
                    batch=r.batch,
                    precision=r.precision,
                    path="fast",
                    experts=r.experts,
                    compiled=False,
                    cuda_graph=False,
                )
                if fast:
                    out["reference_over_fast"][f"{tag} {r.experts}"] = round(r.median_ms / fast, 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


# --------------------------------------------------------------------------------------------------------------------
# Models


def random_model(config: str, seed: int = 0) -> nn.Module:
    """A network of a named config with random weights: 'MoCE_IR_S', or 'arch:variant' (e.g. 'moce_ir:tiny')."""
    from .archs import ARCHS

    arch, _, name = config.rpartition(":")
    runnable = {a: spec for a, spec in ARCHS.items() if spec.standalone}  # not a companion file's network alone
    if arch:
        if arch not in runnable:
            raise IrtoolError(f"--variant {config}: unknown architecture {arch!r} (one of {', '.join(runnable)})")
        candidates = [arch] if name in runnable[arch].variants else []
    else:
        candidates = [a for a, spec in runnable.items() if name in spec.variants]
    if not candidates:
        known = ", ".join(f"{a}:{v}" for a, spec in runnable.items() for v in spec.variants)
        raise IrtoolError(f"--variant {config}: no such config (known: {known})")
    if len(candidates) > 1:
        spelled = " or ".join(f"{a}:{name}" for a in candidates)
        raise IrtoolError(f"--variant {config}: several architectures have it; write {spelled}")
    torch.manual_seed(seed)
    spec = ARCHS[candidates[0]]
    model = spec.build(spec.variants[name])
    if spec.join is None:
        return model
    # a two-file model runs joined: e.g. LoRA-IR's network with the CLIP router (same variant name) that routes it
    companion = ARCHS[spec.join.companion]
    return spec.join.join(model, companion.build(companion.variants[name]), None)


def describe_model(model: nn.Module, source: str) -> dict[str, Any]:
    return {"source": source, **spec_of(model).describe(model)}


# --------------------------------------------------------------------------------------------------------------------
# Measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_runs(fn: Callable[[], Any], device: torch.device, warmup: int, runs: int) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return times


class _MemoryProbe:
    """Peak memory over a block: the CUDA caching allocator's peak on GPUs; on Linux CPUs the process's peak RSS
    (VmHWM, reset through /proc/self/clear_refs after giving free heap back), else the lifetime peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda-allocator" if device.type == "cuda" else "rss"
        self.peak_mb: float | None = None

    @staticmethod
    def _vm_hwm_kb() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def __enter__(self) -> _MemoryProbe:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            speed.release_cpu_memory()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                self.kind = "rss-lifetime"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        hwm = self._vm_hwm_kb() if self.kind == "rss" else None
        if hwm is None:
            self.kind = "rss-lifetime"
            import resource  # Unix only

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak_mb = hwm / 1024


@contextlib.contextmanager
def _part_timer(model: nn.Module, device: torch.device) -> Iterator[dict[str, float]]:
    """Accumulates seconds spent inside each part's modules (hooks, synchronised on GPUs)."""
    profile = spec_of(model).capabilities.profile_parts
    parts: Mapping[str, list[nn.Module]] = profile(model) if profile is not None else {}
    spent = {name: 0.0 for name in parts}
    started: dict[int, float] = {}
    handles = []

    def pre(module: nn.Module, args: Any) -> None:
        _sync(device)
        started[id(module)] = time.perf_counter()

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            _sync(device)
            spent[name] += time.perf_counter() - started.pop(id(module))

        return hook

    for name, modules in parts.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post(name)))
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


def _routing_counts(model: nn.Module, result: Any) -> dict[str, int] | None:
    if spec_of(model).capabilities.routing is None:
        return None
    routing: RoutingRecord = result.routing
    values, counts = torch.unique(routing.experts.cpu(), return_counts=True)
    return {f"e{int(v)}": int(c) for v, c in zip(values, counts)}


def _psnr(a: Tensor, b: Tensor) -> float:
    mse = float((a.float() - b.float()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_bench(
    model: nn.Module,
    device: torch.device,
    plan: BenchPlan,
    *,
    source: str = "",
    on_row: Callable[[BenchRow], None] | None = None,
) -> BenchReport:
    """Measure every case of `plan` on `model` (moved to `device`); returns the report with one row per case."""
    model = speed.prepare(model, device)
    report = BenchReport(
        device=str(device),
        device_name=_device_name(device),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        allocator_tuned=speed._allocator_tuned,
        model=describe_model(model, source),
        load_average=_load() if device.type == "cpu" else None,
    )
    spec = spec_of(model)
    caps = spec.capabilities
    multiple = caps.size_multiple(model)
    modes = expert_modes(model, plan)
    if caps.routing is None:
        report.notes.append(
            f"{spec.title} does not route: no sparse/dense expert split, one mode measured ({NO_EXPERTS!r}) "
            f"instead of --experts {','.join(plan.experts)}"
        )
    gen = torch.Generator().manual_seed(plan.seed)
    for h, w in plan.sizes:
        for batch in plan.batches:
            x = pad_to_multiple(torch.rand(batch, 3, h, w, generator=gen), multiple, caps.padding).to(device)
            try:  # what every row is compared with: fp32, the model's own routing, the fast path
                with torch.inference_mode():
                    reference: Tensor | None = restoring(model).run(x).output.float()
            except RuntimeError:  # e.g. out of memory in fp32 where reduced precision still fits
                reference = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for path in plan.paths:
                for precision in plan.precisions:
                    for experts, mode in _modes(plan, modes, device, path):
                        row = BenchRow(h, w, batch, path, precision, experts)
                        row.compiled, row.cuda_graph = mode == "compile", mode == "graph"
                        try:
                            output = _measure(model, device, plan, x, row)
                        except IrtoolError as exc:
                            row.error = str(exc)
                            output = None
                        except (RuntimeError, ValueError) as exc:  # out of memory, unsupported dtype on a device, ...
                            row.error = first_line(exc, 200)
                            output = None
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                        if output is not None and reference is not None and experts in (*EXPERT_MODES, NO_EXPERTS):
                            row.max_abs_diff = float((output - reference).abs().max())
                            row.psnr_db = _psnr(output, reference)
                        report.rows.append(row)
                        if on_row:
                            on_row(row)
            del x
    if report.load_average is not None:
        report.load_average = (report.load_average[0], _load()[0])
    return report


def expert_modes(model: nn.Module, plan: BenchPlan) -> tuple[str, ...]:
    """The expert modes measured on `model`: the plan's, or the one mode `none` for a network without routing."""
    return plan.experts if spec_of(model).capabilities.routing is not None else (NO_EXPERTS,)


def _modes(plan: BenchPlan, modes: tuple[str, ...], device: torch.device, path: str) -> Iterator[tuple[str, str]]:
    """(expert mode, execution) pairs of one path: every expert mode eagerly, then compiled (--compile) and replayed
    from CUDA graphs (--cuda-graphs, CUDA only, where the expert choice is known in advance: dense, eN, or a network
    without routing)."""
    for experts in modes:
        yield experts, "eager"
    if path != "fast":
        return
    if plan.compile:
        for experts in modes:
            yield experts, "compile"
    if plan.cuda_graphs and device.type == "cuda":
        for experts in modes:
            if experts != "sparse":
                yield experts, "graph"


def count_cases(plan: BenchPlan, device: torch.device, model: nn.Module) -> int:
    """How many rows `run_bench` will produce for `model`."""
    modes = expert_modes(model, plan)
    per_size = sum(len(list(_modes(plan, modes, device, path))) for path in plan.paths) * len(plan.precisions)
    return per_size * len(plan.sizes) * len(plan.batches)


def _load() -> tuple[float, float]:
    one = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (one, one)


def _measure(model: nn.Module, device: torch.device, plan: BenchPlan, x: Tensor, row: BenchRow) -> Tensor | None:
    """Fill `row` with the timings of one case; returns the case's output (fp32, on the device)."""
    spec = spec_of(model)
    caps = spec.capabilities
    routing = None
    if row.experts.startswith("e") and row.experts[1:].isdigit():
        if caps.uniform_routing is None:
            raise IrtoolError(f"{spec.title} cannot impose one expert everywhere")
        try:
            routing = caps.uniform_routing(model, x.shape[0], int(row.experts[1:])).to(device)
        except ValueError as exc:
            raise IrtoolError(str(exc)) from None
    dense = row.experts == "dense"
    if dense and not caps.dense:
        raise IrtoolError(f"{spec.title} has no dense mode")
    # the reference path is an argument of `run`, given only to models that have one
    path: dict[str, bool] = {}
    if row.path == "reference":
        if not caps.reference_path:
            raise IrtoolError(f"{spec.title} has no reference path")
        path["reference"] = True

    def eager() -> Any:
        with torch.inference_mode(), speed.autocast(device, row.precision):
            return restoring(model).run(x, routing, dense=dense, **path)

    call = eager
    if row.cuda_graph:
        graph = speed.CudaGraphRun(model, x, routing=routing, dense=dense, precision=row.precision)
        call = lambda: graph(x)  # noqa: E731
    elif row.compiled:
        compiled = speed.compile_run(model)

        def call() -> Any:
            with torch.inference_mode(), speed.autocast(device, row.precision):
                return compiled(x, routing, dense=dense)

        started = time.perf_counter()
        call()  # compiles
        _sync(device)
        row.compile_s = round(time.perf_counter() - started, 2)

    with _MemoryProbe(device) as probe:
        times = _time_runs(call, device, plan.warmup, plan.runs)
        result = call()
        _sync(device)
    row.memory_kind = probe.kind
    row.peak_memory_mb = None if probe.peak_mb is None else round(probe.peak_mb, 1)
    ms = np.array(times) * 1000
    row.runs = len(times)
    row.median_ms = round(float(np.median(ms)), 3)
    row.p90_ms = round(float(np.percentile(ms, 90)), 3)
    row.min_ms = round(float(ms.min()), 3)
    pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
    # 4 significant figures, not 4 decimals: a slow case (0.0017 MP/s) keeps its precision too
    row.megapixels_per_s = float(f"{pixels / 1e6 / (row.median_ms / 1000):.4g}")
    row.images_per_s = float(f"{x.shape[0] / (row.median_ms / 1000):.4g}")
    row.routing = _routing_counts(model, result)
    output = result.output.float().clone()

    if plan.breakdown and not row.compiled and not row.cuda_graph:
        with _part_timer(model, device) as spent:
            started = time.perf_counter()
            eager()
            _sync(device)
            total = time.perf_counter() - started
        row.breakdown_ms = {name: round(s * 1000, 2) for name, s in spent.items()}
        row.breakdown_ms["trunk"] = round((total - sum(spent.values())) * 1000, 2)
    return output
