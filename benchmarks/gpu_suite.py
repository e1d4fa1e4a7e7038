"""The GPU suite: CUDA correctness, speed and memory in one prepared command (issue 19).

    python benchmarks/gpu_suite.py --out gpu_run --official-src benchmarks/_official     # on a GPU: < 8 minutes
    python benchmarks/gpu_suite.py --dry-run --out /tmp/dry                             # the same parts, toy sizes, CPU

Parts, in this order, each in its own Python process with a time limit (a part that runs past it is killed and
keeps what it had written; the next part starts on time), all limits together under the suite's total:

  cuda_tests     pytest -m cuda (bf16/fp16 autocast, CUDA graphs, compile, the bf16 LoRA-IR router, ...)
  bench          irtool.bench.run_bench: MoCE-IR and MoCE-IR-S at 512² and 1024², batch 1 and 4, fp32/bf16,
                 sparse/dense, eager and CUDA graphs; FLOPs of every forward (torch.utils.flop_counter)
  bench_compile  the same at 512², batch 1, bf16, compiled (torch.compile through irtool.devices.speed.compile_run)
  lora_ir        LoRA-IR Setting I (router and network) through run_bench, and a folder of 8 images through
                 irtool.restoration.engine.restore against the official batch-1 path (experts merged on every call)
  official       the official MoCE-IR code's fp32 eager forward at the same weights, timed in this process beside
                 irtool's fp32 and bf16 forwards (needs --official-src; skipped with the reason without it)
  memory_4k      torch.cuda.max_memory_allocated of a 3840x2160 restore (irtool.restoration.engine.Restorer),
                 whole and tiled, per model and precision
  agreement      bf16 and fp16 against fp32 on photos (examples/), PSNR, and fp16's NaN/Inf with the fp32 redo

then the targets of issue 19 as ratios from this run. Writes OUT/gpu_suite.json (everything) and OUT/gpu_suite.md
(the tables); each part's log is in OUT/logs/. Exit code 0 when no part failed (skipped parts and missed targets
are reported, not failures), 1 otherwise. Random weights everywhere except the built-in trained default model in
`agreement`: speed and memory do not depend on the weight values.

The official source travels in an ignored folder (never committed): the eduardzamfir/MoCE-IR checkout (or just its
`src/net/moce_ir.py`), with `einops` installed into `<folder>/pkgs` (the GPU machine has no network); `fvcore`,
imported by that file for FLOP tables only, is replaced by a stub when missing. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITE = Path(__file__).resolve()
sys.path.insert(0, str(SUITE.parent))  # perf_table's markdown for the bench tables

PARTS = ("cuda_tests", "bench", "bench_compile", "lora_ir", "official", "memory_4k", "agreement")
#: seconds each part may run on the GPU (process start and CUDA initialisation included); with the parent's own
#: few seconds they add up to under 8 minutes, and TOTAL_GPU_S caps the sum whatever the parts take
GPU_LIMITS = {
    "cuda_tests": 75,
    "bench": 100,
    "bench_compile": 75,
    "lora_ir": 45,
    "official": 40,
    "memory_4k": 55,
    "agreement": 35,
}
TOTAL_GPU_S = 460
#: the dry run on a CPU: limits that a healthy run never meets (so a hang still ends the test)
DRY_LIMITS = {part: 150 for part in PARTS}
TOTAL_DRY_S = 600

#: bf16 dense (no structured sparsity) tensor-core peak in TFLOPS, from NVIDIA's datasheets, matched against
#: torch.cuda.get_device_name in this order (first match wins); --peak-tflops overrides
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)
GB = 1e9  # the 4K target's "8 GB" in bytes (decimal gigabytes: the stricter reading of GiB vs GB is not needed)
FOUR_K_LIMIT_GB = 8.0


@dataclass(frozen=True)
class Scale:
    """What the parts run: the GPU sizes, or toy sizes for the CPU dry run."""

    moce: tuple[tuple[str, str], ...]  #: (label, irtool.bench.random_model config)
    sizes: tuple[int, int]  #: the issue's 512² and 1024²
    batches: tuple[int, ...]
    warmup: int
    runs: int
    compile: bool
    lora: str
    lora_size: int
    four_k: tuple[int, int]  #: (height, width)
    tile: int
    photo_side: int  #: longest side the agreement photos are used at (0: as stored)
    official_runs: int
    folder_images: int  #: the LoRA-IR folder (8 in the issue)
    precisions_4k: tuple[str, ...]


GPU = Scale(
    moce=(("MoCE-IR", "MoCE_IR"), ("MoCE-IR-S", "MoCE_IR_S")),
    sizes=(512, 1024),
    batches=(1, 4),
    warmup=3,
    runs=10,
    compile=True,
    lora="lora_ir:setting1",
    lora_size=512,
    four_k=(2160, 3840),
    tile=1024,
    photo_side=0,
    official_runs=10,
    folder_images=8,
    precisions_4k=("bf16", "fp32", "fp16"),
)
#: one tiny MoCE-IR stands for both MoCE-IR configs; 16 and 32 px stand for 512 and 1024; 4 images for the folder
DRY = Scale(
    moce=(("MoCE-IR", "moce_ir:tiny"),),
    sizes=(16, 32),
    batches=(1, 2),
    warmup=0,
    runs=1,
    compile=False,
    lora="lora_ir:tiny",
    lora_size=32,
    four_k=(40, 64),
    tile=32,
    photo_side=40,
    official_runs=1,
    folder_images=4,
    precisions_4k=("bf16", "fp32", "fp16"),
)


# --------------------------------------------------------------------------------------------------------------------
# One part, in its own process


class Part:
    """What a part records: written to OUT/parts/<name>.json after every step, so a killed part keeps its steps."""

    def __init__(self, name: str, out: Path, deadline: float, args: argparse.Namespace) -> None:
        self.name, self.out, self.deadline, self.args = name, out, deadline, args
        self.scale = DRY if args.dry_run else GPU
        self.record: dict[str, Any] = {"part": name, "status": "running", "data": {}, "notes": []}
        self.started = time.time()
        import torch

        self.device = torch.device(args.device)
        if args.dry_run:  # one thread: on a shared CPU, OpenMP's spinning threads cost 10-100x the CPU time
            torch.set_num_threads(1)
        self.cuda = self.device.type == "cuda"

    @property
    def data(self) -> dict[str, Any]:
        return self.record["data"]

    def left(self) -> float:
        return self.deadline - time.time()

    def enough(self, what: str, seconds: float = 0.0) -> bool:
        """False (and a note) once the part's own deadline is near: later steps are left out, not started."""
        if self.left() > seconds:
            return True
        self.record["notes"].append(f"left out for time: {what}")
        self.save()
        return False

    def note(self, text: str) -> None:
        self.record["notes"].append(text)

    def skip(self, reason: str) -> None:
        self.record["status"], self.record["reason"] = "skipped", reason

    def save(self) -> None:
        self.record["seconds"] = round(time.time() - self.started, 1)
        path = self.out / "parts" / f"{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str))
        tmp.replace(path)


def _free(part: Part) -> None:
    import gc

    import torch

    gc.collect()
    if part.cuda:
        torch.cuda.empty_cache()


def _model(part: Part, config: str) -> Any:
    from irtool import bench
    from irtool.devices import speed

    model = bench.random_model(config, seed=0)
    if getattr(model, "arch", "") == "lora_ir" and part.cuda:  # as irtool.load_model runs LoRA-IR on CUDA
        import torch

        model.router.to(dtype=torch.bfloat16)
    return speed.prepare(model, part.device)


def _photos(side: int, count: int, size: tuple[int, int] | None = None) -> list[Any]:
    """The example photos (examples/*.png) as float32 RGB arrays: as stored, shrunk to `side`, or resized and
    centre-cropped to exactly `size` (h, w); cycled to `count`."""
    import cv2
    import numpy as np

    from irtool.images import files as io

    files = sorted((REPO / "examples").glob("*.png"))
    if not files:
        raise RuntimeError(f"no photos in {REPO / 'examples'}")
    out = []
    for k in range(count):
        rgb = io.read_image(files[k % len(files)]).rgb
        h, w = rgb.shape[:2]
        if size is not None:
            th, tw = size
            scale = max(th / h, tw / w)
            rgb = cv2.resize(rgb, (max(tw, round(w * scale)), max(th, round(h * scale))), interpolation=cv2.INTER_CUBIC)
            y, x = (rgb.shape[0] - th) // 2, (rgb.shape[1] - tw) // 2
            rgb = rgb[y : y + th, x : x + tw]
            if k >= len(files):  # a different crop for each repeat, so a folder never holds the same image twice
                rgb = np.ascontiguousarray(np.rot90(rgb, 2))
        elif side and max(h, w) > side:
            scale = side / max(h, w)
            rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        out.append(np.clip(np.ascontiguousarray(rgb, dtype=np.float32), 0, 1))
    return out


# -- cuda_tests


def part_cuda_tests(part: Part) -> None:
    import xml.etree.ElementTree as ET

    junit = part.out / "logs" / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    part.data["command"] = "python -m pytest -m cuda -q"
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(5.0, part.left()))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pytest -m cuda ran past the part's limit ({part.left():.0f} s left)") from None
    part.data["exit_code"] = done.returncode
    part.data["tail"] = (done.stdout + done.stderr).strip().splitlines()[-15:]
    if not junit.is_file():
        raise RuntimeError(f"pytest exited {done.returncode} without a report: {part.data['tail'][-1:]}")
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests: list[dict[str, str]] = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": message})
    part.data["tests"] = tests
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    part.data["counts"] = counts
    if not tests:
        raise RuntimeError("pytest -m cuda selected no tests: the cuda marker has gone missing")
    if counts["failed"] or counts["error"] or done.returncode not in (0,):
        raise RuntimeError(
            f"pytest -m cuda: {counts['failed']} failed, {counts['error']} errors, "
            f"{counts['passed']} passed (exit {done.returncode})"
        )
    if not part.cuda and counts["passed"] == 0:
        part.skip(f"no CUDA device: the {counts['skipped']} tests that pytest -m cuda selects all skipped")


# -- bench


def _count_flops(model: Any, device: Any, plan: Any) -> dict[str, int]:
    """FLOPs of one forward per (batch, experts) of `plan`, on the very inputs run_bench draws (same generator, same
    order), counted by torch.utils.flop_counter.FlopCounterMode: convolutions, matmuls and attention, 2 per
    multiply-add; FFTs and elementwise work are not counted, so utilisation figures from them are lower bounds."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counts: dict[str, int] = {}
    gen = torch.Generator().manual_seed(plan.seed)
    for h, w in plan.sizes:
        for batch in plan.batches:
            x = torch.rand(batch, 3, h, w, generator=gen).to(device)
            for experts in plan.experts:
                with FlopCounterMode(display=False) as counter, torch.inference_mode():
                    model.run(x, dense=experts == "dense")
                counts[f"{w}x{h} b{batch} {experts}"] = int(counter.get_total_flops())
    return counts


def _with_tflops(report: dict[str, Any], flops: dict[str, int]) -> None:
    for row in report["rows"]:
        n = flops.get(f"{row['width']}x{row['height']} b{row['batch']} {row['experts']}")
        row["flops"] = n
        row["tflops"] = round(n / (row["median_ms"] / 1000) / 1e12, 3) if n and row.get("median_ms") else None


def _run_bench(part: Part, label: str, config: str, plan: Any, model: Any = None) -> dict[str, Any]:
    from irtool import bench

    model = model if model is not None else _model(part, config)
    report = bench.run_bench(model, part.device, plan, source=f"random weights ({config})").to_dict()
    report["label"], report["config"] = label, config
    return report


def part_bench(part: Part) -> None:
    from irtool import bench

    s = part.scale
    part.data["reports"] = []
    for label, config in s.moce:
        model = _model(part, config)
        for size in s.sizes:
            if not part.enough(f"{label} {size}x{size}", 5):
                return
            plan = bench.BenchPlan(
                sizes=((size, size),),
                batches=s.batches,
                precisions=("fp32", "bf16"),
                experts=("sparse", "dense"),
                cuda_graphs=True,
                warmup=s.warmup,
                runs=s.runs,
            )
            report = _run_bench(part, label, config, plan, model)
            _with_tflops(report, _count_flops(model, part.device, plan))
            part.data["reports"].append(report)
            part.save()
        del model
        _free(part)


def part_bench_compile(part: Part) -> None:
    from irtool import bench

    s = part.scale
    part.data["reports"] = []
    if not s.compile:
        part.note(
            "dry run: compiled rows left out (inductor takes minutes per graph on a CPU; "
            "tests/test_bench.py::test_compiled_run_equals_eager checks compile on CPU); eager rows only"
        )
    for label, config in s.moce:
        model = _model(part, config)
        for experts in ("dense", "sparse"):  # dense first: no graph breaks, the shorter compile
            if not part.enough(f"{label} compile {experts}", 20):
                return
            plan = bench.BenchPlan(
                sizes=((s.sizes[0], s.sizes[0]),),
                batches=(1,),
                precisions=("bf16",),
                experts=(experts,),
                compile=s.compile,
                warmup=s.warmup,
                runs=s.runs,
            )
            part.data["reports"].append(_run_bench(part, label, config, plan, model))
            part.save()
        del model
        _free(part)


# -- lora_ir


def part_lora_ir(part: Part) -> None:
    import numpy as np
    import torch

    from irtool import bench
    from irtool.images import files as io
    from irtool.restoration import engine

    s = part.scale
    model = _model(part, s.lora)
    plan = bench.BenchPlan(
        sizes=((s.lora_size, s.lora_size),),
        batches=s.batches,
        precisions=("fp32", "bf16"),
        experts=("sparse", "dense"),
        breakdown=True,
        warmup=s.warmup,
        runs=s.runs,
    )
    part.data["reports"] = [_run_bench(part, "LoRA-IR Setting I", s.lora, plan, model)]
    part.save()
    if not part.enough("folder of 8", 5):
        return

    # A folder of 8 photos, restored by irtool's engine in batches of 8 (router, then each expert merged once and
    # cached), against the official batch-1 path: one image per call, the expert merged into every conv on every
    # call. The official LoRA-IR code is not brought in (it needs basicsr); its path is emulated by irtool's own
    # LoRA-IR with the merged-expert cache cleared before every image (the same merge the official loralib does).
    n = s.folder_images
    photos = _photos(0, n, (s.lora_size, s.lora_size))
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_lora_"))
    folder = work / "in"
    folder.mkdir()
    for k, rgb in enumerate(photos):
        io.write_image(folder / f"photo{k}.png", io.from_array(rgb), rgb)

    def irtool_folder(out: Path) -> float:
        started = time.perf_counter()
        results = engine.restore(
            str(folder), str(out), model=model, device=str(part.device), precision="fp32", batch_size=n, overwrite=True
        )
        seconds = time.perf_counter() - started
        failed = [r.report.error for r in results if r.report.status != "ok"]
        if len(results) != n or failed:
            raise RuntimeError(f"engine.restore of the folder: {len(results)} results, failures {failed[:2]}")
        return seconds

    xs = [torch.from_numpy(p).permute(2, 0, 1)[None].contiguous().to(part.device) for p in photos]

    def official_batch1() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for x in xs:
                model.ir.clear_merged()
                model.run(x)
        if part.cuda:
            torch.cuda.synchronize(part.device)
        return time.perf_counter() - started

    irtool_folder(work / "warm")  # warm-up: cuDNN algorithm choice, the merges, the thread pools
    official_batch1()
    rounds = 3 if not part.args.dry_run else 1
    ours, theirs = [], []
    for r in range(rounds):  # interleaved, so both see the same machine state
        ours.append(irtool_folder(work / f"out{r}"))
        theirs.append(official_batch1())
    with torch.inference_mode():  # the two paths restore the same pixels
        model.ir.clear_merged()
        a = torch.cat([model.run(x).output for x in xs])
        b = model.run(torch.cat(xs)).output
    part.data["folder_of_8"] = {
        "images": n,
        "size": [s.lora_size, s.lora_size],
        "precision": "fp32",
        "irtool": f"irtool.restoration.engine.restore(folder, out, batch_size={n}): decoding, batching, routing, restoring, "
        f"writing {n} PNGs",
        "official": "emulated: irtool's LoRA-IR one image per call with its merged-expert cache cleared before each "
        "(the official batch-1 path merges the experts on every call); images already on the device, "
        "no file I/O",
        "irtool_per_image_s": [round(t / n, 5) for t in ours],
        "official_per_image_s": [round(t / n, 5) for t in theirs],
        "ratio": round(float(np.median(ours)) / float(np.median(theirs)), 3),
        "max_abs_diff": float((a - b).abs().max()),
    }
    part.save()


# -- official


def _official_module(src: Path) -> Any:
    import importlib.util
    import types

    candidates = [src / "src" / "net" / "moce_ir.py", src / "net" / "moce_ir.py", src / "moce_ir.py", src]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{src}: no src/net/moce_ir.py (the eduardzamfir/MoCE-IR layout) or moce_ir.py in it")
    for pkgs in (src / "pkgs", file.parent / "pkgs"):
        if pkgs.is_dir():
            sys.path.insert(0, str(pkgs))
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:  # used by the official file for its FLOP table only
        stub = types.ModuleType("fvcore.nn")

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("fvcore stub (gpu_suite)")

        stub.FlopCountAnalysis = stub.flop_count_table = unavailable  # type: ignore[attr-defined]
        sys.modules["fvcore"], sys.modules["fvcore.nn"] = types.ModuleType("fvcore"), stub
    spec = importlib.util.spec_from_file_location("official_moce_ir", file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.__suite_file__ = str(file)
    return module


def _official_kwargs(config: Any) -> dict[str, Any]:
    """irtool's MoCEIRConfig as the official MoCEIR(**kwargs) (the inverse of MoCEIRConfig.from_official_kwargs)."""
    return {
        "dim": config.dim,
        "levels": config.levels,
        "num_blocks": list(config.num_blocks),
        "num_dec_blocks": list(config.num_dec_blocks),
        "num_refinement_blocks": config.num_refinement_blocks,
        "heads": list(config.heads),
        "ffn_expansion_factor": config.ffn_expansion_factor,
        "num_experts": config.num_experts,
        "topk": config.top_k,
        "rank": config.rank,
        "rank_type": config.rank_type,
        "depth_type": "constant",
        "stage_depth": [1] * (config.levels - 1),
        "complexity_scale": config.complexity_scale,
        "with_complexity": config.with_complexity,
        "bias": config.bias,
        "LayerNorm_type": config.layernorm_type,
        "inp_channels": config.in_channels,
        "out_channels": config.out_channels,
    }


def part_official(part: Part) -> None:
    import numpy as np
    import torch

    from irtool import bench
    from irtool.devices import speed

    src = part.args.official_src
    if src is None:
        part.skip("no --official-src: bring the official MoCE-IR source (see benchmarks/README.md)")
        return
    if not Path(src).exists():
        part.skip(f"--official-src {src}: no such folder on this machine")
        return
    try:
        module = _official_module(Path(src))
    except (ImportError, FileNotFoundError) as exc:
        part.skip(f"the official code does not import: {exc}")
        return
    part.data["source"] = module.__suite_file__
    s = part.scale
    size = s.sizes[0]
    part.data["rows"] = []
    for label, config in s.moce[:1] if part.args.dry_run else s.moce:
        if not part.enough(f"{label} against the official code", 8):
            return
        ours = _model(part, config)
        torch.manual_seed(0)
        official = module.MoCEIR(**_official_kwargs(ours.config))
        official.load_state_dict({k: v.cpu() for k, v in ours.state_dict().items()}, strict=True)
        for m in official.modules():  # its eval routing adds noise; off, so both pick the same experts
            if hasattr(m, "noise_std"):
                m.noise_std = 0.0
        official = official.eval().requires_grad_(False).to(part.device)
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(part.device)
        with torch.inference_mode():
            reference = official(x).float()
            mine = ours.run(x)
        routing = mine.routing
        diff = float((mine.output.float() - reference).abs().max())

        def run_official() -> Any:
            with torch.inference_mode():
                return official(x)  # noqa: F821 - deleted at the end of this iteration, after its last call

        def run_ours(precision: str) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode(), speed.autocast(part.device, precision):
                    return ours.run(x)  # noqa: F821 - as above

            return call

        cases: dict[str, Callable[[], Any]] = {
            "official fp32 eager": run_official,
            "irtool fp32 eager": run_ours("fp32"),
            "irtool bf16 eager": run_ours("bf16"),
        }
        if part.cuda:  # its own routing, decided once, replayed from a graph (what a video or tile loop does)
            graph = speed.CudaGraphRun(ours, x, routing=routing, precision="bf16")
            cases["irtool bf16 CUDA graph (own routing)"] = lambda: graph(x)
        times: dict[str, list[float]] = {k: [] for k in cases}
        rounds = 3
        for r in range(rounds):  # interleaved rounds: every case sees the same machine state
            for name, fn in cases.items():
                times[name] += bench._time_runs(
                    fn, part.device, s.warmup if r == 0 else 1, max(1, s.official_runs // rounds)
                )
        official_ms = float(np.median(times["official fp32 eager"])) * 1000
        for name, t in times.items():
            ms = float(np.median(t)) * 1000
            part.data["rows"].append(
                {
                    "model": label,
                    "config": config,
                    "size": [size, size],
                    "batch": 1,
                    "case": name,
                    "median_ms": round(ms, 3),
                    "runs": len(t),
                    "official_over_this": round(official_ms / ms, 3),
                }
            )
        part.data.setdefault("agreement", {})[label] = {"max_abs_diff_fp32": diff}
        part.save()
        del ours, official, cases
        _free(part)


# -- memory_4k


def part_memory_4k(part: Part) -> None:
    from irtool import bench
    from irtool.images import files as io
    from irtool.restoration import engine
    from irtool.restoration.planning import RestoreOptions

    s = part.scale
    h, w = s.four_k
    image = io.from_array(_photos(0, 1, (h, w))[0])
    part.data["size"] = [h, w]
    part.data["rows"] = []
    models = list(s.moce) + [("LoRA-IR Setting I", s.lora)]
    for label, config in models:
        model = _model(part, config)
        for precision in s.precisions_4k:
            for tile in (0, s.tile):
                if not part.enough(f"{label} {precision} {'tiled' if tile else 'whole'}", 3):
                    return
                row: dict[str, Any] = {
                    "model": label,
                    "config": config,
                    "precision": precision,
                    "mode": f"tiles of {tile}" if tile else "whole",
                    "peak_mb": None,
                }
                restorer = engine.Restorer(
                    model, RestoreOptions(device=str(part.device), precision=precision, tile=tile)
                )
                started = time.perf_counter()
                try:
                    with bench._MemoryProbe(part.device) as probe:
                        outcome = restorer.restore([image])[0]
                    row.update(
                        peak_mb=round(probe.peak_mb, 1),
                        memory_kind=probe.kind,
                        tiles=outcome.tiles,
                        ran_as=outcome.precision,
                        warnings=outcome.warnings,
                        seconds=round(time.perf_counter() - started, 3),
                    )
                except Exception as exc:  # noqa: BLE001 - recorded per row
                    row["error"] = bench._first_line(exc)
                part.data["rows"].append(row)
                part.save()
                _free(part)
        del model
        _free(part)


# -- agreement


def part_agreement(part: Part) -> None:
    import numpy as np
    import torch

    from irtool import loading
    from irtool.devices import speed
    from irtool.images import files as io
    from irtool.restoration import engine
    from irtool.restoration.planning import RestoreOptions
    from irtool.restoration.tiling import run_padded

    s = part.scale
    photos = _photos(s.photo_side, 2 if part.args.dry_run else 5)
    path, router, how = loading.default_source()
    trained = speed.prepare(loading.load_model(path, device=str(part.device)), part.device)
    models: list[tuple[str, Any]] = [("irtool.default (trained)", trained)]
    models += [(f"{label} (random weights)", config) for label, config in s.moce[:1] + (("LoRA-IR Setting I", s.lora),)]
    part.data["rows"] = []
    for label, model in models:
        if not part.enough(label, 3):
            return
        model = _model(part, model) if isinstance(model, str) else model
        restorers = {
            p: engine.Restorer(model, RestoreOptions(device=str(part.device), precision=p))
            for p in ("fp32", "bf16", "fp16")
        }
        for k, rgb in enumerate(photos):
            image = io.from_array(rgb)
            row: dict[str, Any] = {"model": label, "photo": k, "size": list(rgb.shape[:2])}
            try:
                out = {p: r.restore([image])[0] for p, r in restorers.items()}
                for p in ("bf16", "fp16"):
                    mse = float(np.mean((out[p].rgb.astype(np.float64) - out["fp32"].rgb) ** 2))
                    row[f"{p}_psnr_db"] = round(10 * math.log10(1 / mse), 2) if mse > 0 else math.inf
                    row[f"{p}_ran_as"] = out[p].precision
                    row[f"{p}_warnings"] = out[p].warnings
                # fp16 without the engine's safety net: how many output values overflow to NaN/Inf
                x = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous().to(part.device)
                with torch.inference_mode(), speed.autocast(part.device, "fp16"):
                    raw = run_padded(model, x).output  # any photo size: padded to the multiple
                row["fp16_raw_nonfinite"] = int((~torch.isfinite(raw)).sum())
            except Exception as exc:  # noqa: BLE001 - recorded per row
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            part.data["rows"].append(row)
            part.save()
        del model, restorers
        _free(part)


PART_FUNCTIONS: dict[str, Callable[[Part], None]] = {
    "cuda_tests": part_cuda_tests,
    "bench": part_bench,
    "bench_compile": part_bench_compile,
    "lora_ir": part_lora_ir,
    "official": part_official,
    "memory_4k": part_memory_4k,
    "agreement": part_agreement,
}


def run_part(args: argparse.Namespace) -> int:
    out = args.out
    part = Part(args.part, out, args.deadline or time.time() + 3600, args)
    part.record["device"] = str(part.device)
    if part.cuda:
        import torch

        part.record["device_name"] = torch.cuda.get_device_name(part.device)
    part.save()
    try:
        PART_FUNCTIONS[args.part](part)
        if part.record["status"] == "running":
            part.record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the part fails, the suite goes on
        part.record["status"] = "failed"
        part.record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
        part.record["traceback"] = traceback.format_exc().splitlines()[-12:]
    part.save()
    return 0


# --------------------------------------------------------------------------------------------------------------------
# The suite: parts one after another under their limits, then the targets


def run_suite(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                f"gpu_suite: --device {args.device}: CUDA is not available here (torch {torch.__version__}); "
                "--dry-run checks the suite on the CPU",
                file=sys.stderr,
            )
            return 2
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    limits, total = (DRY_LIMITS, TOTAL_DRY_S) if args.dry_run else (GPU_LIMITS, TOTAL_GPU_S)
    suite_start = time.time()
    parts: dict[str, dict[str, Any]] = {}
    chosen = [p for p in PARTS if not args.parts or p in args.parts]
    for name in PARTS:
        if name not in chosen:
            parts[name] = {"part": name, "status": "skipped", "reason": "not chosen by --parts"}
            continue
        left = total - (time.time() - suite_start)
        limit = min(limits[name], left - 3)
        if limit < 10:
            parts[name] = {"part": name, "status": "skipped", "reason": f"the suite's {total} s were spent"}
            continue
        margin = max(5.0, 0.12 * limit)  # the part stops starting steps this long before it would be killed
        cmd = [
            sys.executable,
            str(SUITE),
            "--part",
            name,
            "--out",
            str(out),
            "--device",
            args.device,
            "--deadline",
            str(time.time() + limit - margin),
        ]
        cmd += ["--dry-run"] if args.dry_run else []
        cmd += ["--official-src", str(args.official_src)] if args.official_src else []
        print(f"[{time.time() - suite_start:5.0f} s] {name} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
        started = time.time()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if args.dry_run else {})}
        with open(out / "logs" / f"{name}.log", "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                proc.wait(timeout=limit)
                killed = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it started (pytest, compile workers)
                proc.wait()
                killed = True
        path = out / "parts" / f"{name}.json"
        record = json.loads(path.read_text()) if path.is_file() else {"part": name, "data": {}}
        record["seconds"] = round(time.time() - started, 1)
        record["limit_s"] = round(limit)
        if killed:
            record["status"] = "failed"
            record["error"] = f"ran past its {limit:.0f} s limit and was killed (steps finished before are kept)"
        elif record.get("status") in (None, "running"):
            record["status"] = "failed"
            record["error"] = f"the part's process ended (exit {proc.returncode}) before recording a result; see logs"
        parts[name] = record
    record = {
        "suite": "benchmarks/gpu_suite.py",
        "command": " ".join(["python", "benchmarks/gpu_suite.py", *args.argv]),
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(suite_start)),
        "seconds": round(time.time() - suite_start, 1),
        "environment": _environment(parts),
        "parts": parts,
    }
    record["targets"] = targets(record, args.peak_tflops)
    (out / "gpu_suite.json").write_text(json.dumps(record, indent=1, default=str))
    text = markdown(record)
    (out / "gpu_suite.md").write_text(text)
    print(text)
    return 1 if any(p["status"] == "failed" for p in parts.values()) else 0


def _environment(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import platform

    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    for p in parts.values():
        if p.get("device"):
            env["device"] = p["device"]
        if p.get("device_name"):
            env["device_name"] = p["device_name"]
    try:
        env["torch"] = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except subprocess.TimeoutExpired:
        pass
    return env


# -- targets


def peak_tflops(device_name: str | None, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"--peak-tflops {override:g}"
    for key, value in PEAK_BF16_TFLOPS:
        if device_name and key.lower() in device_name.lower():
            return value, f"{key} bf16 dense peak (NVIDIA datasheet)"
    return None, f"no bf16 peak known for {device_name or 'this device'}; give --peak-tflops"


def _rows(parts: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out = []
    for report in parts.get(name, {}).get("data", {}).get("reports", []):
        for row in report["rows"]:
            out.append({**row, "label": report.get("label"), "device_name": report.get("device_name")})
    return out


def targets(record: dict[str, Any], override: float | None) -> list[dict[str, Any]]:
    """The issue's four targets, each with what was measured in this run and met / missed / not measured. In a
    dry run the figures come from toy sizes on a CPU and are never judged."""
    parts = record["parts"]
    dry = record["dry_run"]
    small, large = (DRY if dry else GPU).sizes

    def judge(ok: bool | None, why: str = "") -> str:
        if ok is None:
            return f"not measured: {why}"
        return "dry run (toy sizes, not judged)" if dry else ("met" if ok else "missed")

    rows: list[dict[str, Any]] = []

    # 1. bf16 throughput at 512², batch 1, against the official fp32 eager forward (same process)
    off = parts["official"]
    best = None
    for r in off.get("data", {}).get("rows", []):
        if r["model"] == "MoCE-IR" and r["case"].startswith("irtool bf16"):
            if best is None or r["official_over_this"] > best["official_over_this"]:
                best = r
    if best:
        rows.append(
            {
                "target": f"MoCE-IR bf16 throughput at {small}², batch 1 >= 5x the official fp32 eager code",
                "measured": f"{best['case']}: {best['median_ms']:.2f} ms",
                "ratio": best["official_over_this"],
                "status": judge(best["official_over_this"] >= 5),
            }
        )
    else:
        why = off.get("reason") or off.get("error") or "no rows"
        rows.append(
            {
                "target": f"MoCE-IR bf16 throughput at {small}², batch 1 >= 5x the official fp32 eager code",
                "measured": "",
                "ratio": None,
                "status": judge(None, why),
            }
        )

    # 2. share of the bf16 dense peak at 1024² (sparse experts: what a restore runs)
    candidates = [
        r
        for r in _rows(parts, "bench") + _rows(parts, "bench_compile")
        if r["label"] == "MoCE-IR"
        and r["precision"] == "bf16"
        and r["experts"] == "sparse"
        and r["height"] == large
        and r.get("tflops")
    ]
    name = "MoCE-IR bf16 at 1024² >= 25% of the GPU's bf16 dense peak"
    if candidates:
        r = max(candidates, key=lambda r: r["tflops"])
        peak, peak_how = peak_tflops(r.get("device_name"), override)
        measured = (
            f"{r['tflops']:.1f} TFLOPS ({r['flops'] / r['batch'] / 1e9:.1f} GFLOP per image, "
            f"FlopCounterMode; {r['width']}x{r['height']} b{r['batch']} sparse"
            f"{' +compile' if r['compiled'] else ''}, {r['median_ms']:.2f} ms)"
        )
        if peak:
            share = r["tflops"] / peak
            rows.append(
                {
                    "target": name,
                    "measured": f"{measured} of {peak:g} TFLOPS ({peak_how})",
                    "ratio": round(share, 4),
                    "status": judge(share >= 0.25),
                }
            )
        else:
            rows.append({"target": name, "measured": measured, "ratio": None, "status": judge(None, peak_how)})
    else:
        why = parts["bench"].get("error") or parts["bench"].get("reason") or f"no MoCE-IR bf16 {large}² row"
        rows.append({"target": name, "measured": "", "ratio": None, "status": judge(None, why)})

    # 3. a 4K photo within 8 GB (bf16, whole image: no tiling, the global routing and attention stay exact)
    mem = parts["memory_4k"]
    h, w = mem.get("data", {}).get("size", [None, None])
    name = f"a 3840x2160 photo restores in <= {FOUR_K_LIMIT_GB:g} GB peak (MoCE-IR bf16, whole)"
    found = [
        r
        for r in mem.get("data", {}).get("rows", [])
        if r["model"] == "MoCE-IR"
        and r["precision"] == "bf16"
        and r["mode"] == "whole"
        and r.get("peak_mb") is not None
    ]
    if found:
        r = found[0]
        gb = r["peak_mb"] * 2**20 / GB
        cuda = r.get("memory_kind") == "cuda-allocator"
        rows.append(
            {
                "target": name,
                "measured": f"{gb:.2f} GB ({r['memory_kind']}, {w}x{h})",
                "ratio": round(gb / FOUR_K_LIMIT_GB, 3),
                "status": judge(gb <= FOUR_K_LIMIT_GB) if cuda or dry else judge(None, "no CUDA allocator"),
            }
        )
    else:
        why = mem.get("error") or mem.get("reason") or "no MoCE-IR bf16 whole row"
        rows.append({"target": name, "measured": "", "ratio": None, "status": judge(None, why)})

    # 4. LoRA-IR Setting I, a folder of 8: irtool's per-image time against the official batch-1 path
    lora = parts["lora_ir"].get("data", {}).get("folder_of_8")
    name = "LoRA-IR Setting I, folder of 8: per-image time <= 0.5x the official batch-1 path (emulated)"
    if lora:
        ours = sorted(lora["irtool_per_image_s"])[len(lora["irtool_per_image_s"]) // 2]
        theirs = sorted(lora["official_per_image_s"])[len(lora["official_per_image_s"]) // 2]
        rows.append(
            {
                "target": name,
                "measured": f"{ours * 1000:.1f} ms vs {theirs * 1000:.1f} ms per image",
                "ratio": lora["ratio"],
                "status": judge(lora["ratio"] <= 0.5),
            }
        )
    else:
        p = parts["lora_ir"]
        rows.append(
            {
                "target": name,
                "measured": "",
                "ratio": None,
                "status": judge(None, p.get("error") or p.get("reason") or "no folder run"),
            }
        )
    return rows


# -- markdown


def _status(p: dict[str, Any]) -> str:
    if p["status"] == "ok":
        return "ok"
    return f"{p['status']}: {p.get('error') or p.get('reason') or ''}".rstrip(": ")


def markdown(record: dict[str, Any]) -> str:
    from perf_table import markdown as bench_markdown

    env = record["environment"]
    parts = record["parts"]
    lines = [
        f"# GPU suite{' (dry run: toy sizes on ' + env.get('device', 'cpu') + ', nothing here is a measurement)' if record['dry_run'] else ''}",
        "",
        f"`{record['command']}`: {record['started']}, {record['seconds']:.0f} s; {env.get('device_name') or env.get('device')}, "
        f"torch {env.get('torch')}, Python {env.get('python')}",
        "",
        "## Targets",
        "",
        "| target | measured | ratio | status |",
        "|---|---|---:|---|",
    ]
    for t in record["targets"]:
        ratio = "" if t["ratio"] is None else f"{t['ratio']:g}"
        lines.append(f"| {t['target']} | {t['measured']} | {ratio} | {t['status']} |")
    lines += ["", "## Parts", "", "| part | status | seconds | notes |", "|---|---|---:|---|"]
    for name in PARTS:
        p = parts[name]
        lines.append(f"| {name} | {_status(p)} | {p.get('seconds', 0)} | {'; '.join(p.get('notes', []))} |")

    tests = parts["cuda_tests"].get("data", {})
    if tests.get("tests"):
        c = tests["counts"]
        lines += [
            "",
            "## CUDA tests",
            "",
            f"`{tests['command']}`: {c['passed']} passed, {c['failed']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped",
            "",
            "| test | outcome |",
            "|---|---|",
        ]
        lines += [
            f"| {t['test']} | {t['outcome']}{': ' + t['message'] if t['message'] else ''} |" for t in tests["tests"]
        ]

    for name, title in (
        ("bench", "irtool bench"),
        ("bench_compile", "torch.compile"),
        ("lora_ir", "LoRA-IR Setting I"),
    ):
        reports = parts[name].get("data", {}).get("reports", [])
        if reports:
            lines += ["", f"## {title}", "", bench_markdown(reports)]
            flops = [r for r in _rows(parts, name) if r.get("tflops")]
            if flops:
                lines += [
                    "",
                    "FLOPs counted with torch.utils.flop_counter.FlopCounterMode on the same input "
                    "(convolutions, matmuls, attention; not the FFTs):",
                    "",
                    "| model | case | GFLOP / image | TFLOPS |",
                    "|---|---|---:|---:|",
                ]
                for r in flops:
                    case = f"{r['width']}x{r['height']} b{r['batch']} {r['precision']} {r['experts']}"
                    case += " +compile" if r["compiled"] else " +graph" if r["cuda_graph"] else ""
                    lines.append(f"| {r['label']} | {case} | {r['flops'] / r['batch'] / 1e9:.2f} | {r['tflops']:.2f} |")

    folder = parts["lora_ir"].get("data", {}).get("folder_of_8")
    if folder:
        lines += [
            "",
            f"Folder of 8 ({folder['size'][1]}x{folder['size'][0]}, {folder['precision']}): irtool "
            f"{folder['irtool_per_image_s']} s per image ({folder['irtool']}); official batch-1 path "
            f"{folder['official_per_image_s']} s per image ({folder['official']}); ratio {folder['ratio']}, "
            f"outputs agree to {folder['max_abs_diff']:.1e}.",
        ]

    off = parts["official"].get("data", {})
    if off.get("rows"):
        lines += [
            "",
            "## Against the official MoCE-IR code (same weights, same process)",
            "",
            f"Source: `{off['source']}`; outputs at fp32: "
            + ", ".join(f"{k} max abs diff {v['max_abs_diff_fp32']:.1e}" for k, v in off["agreement"].items()),
            "",
            "| model | size | case | median ms | official / this |",
            "|---|---|---|---:|---:|",
        ]
        for r in off["rows"]:
            lines.append(
                f"| {r['model']} | {r['size'][1]}x{r['size'][0]} b1 | {r['case']} | {r['median_ms']:.2f} | "
                f"{r['official_over_this']:.2f} |"
            )

    mem = parts["memory_4k"].get("data", {})
    if mem.get("rows"):
        lines += [
            "",
            f"## Peak memory, {mem['size'][1]}x{mem['size'][0]} restore (irtool.restoration.engine.Restorer)",
            "",
            "| model | precision | mode | peak MB | kind | tiles | s | notes |",
            "|---|---|---|---:|---|---:|---:|---|",
        ]
        for r in mem["rows"]:
            if r.get("error"):
                lines.append(f"| {r['model']} | {r['precision']} | {r['mode']} | | | | | {r['error']} |")
            else:
                lines.append(
                    f"| {r['model']} | {r['precision']} | {r['mode']} | {r['peak_mb']:.0f} | {r['memory_kind']} | "
                    f"{r['tiles']} | {r['seconds']:.2f} | {'; '.join(r['warnings'])} |"
                )

    agree = parts["agreement"].get("data", {})
    if agree.get("rows"):
        lines += [
            "",
            "## Reduced precision against fp32 on photos (examples/)",
            "",
            "| model | photo | size | bf16 PSNR dB | fp16 PSNR dB | fp16 raw NaN/Inf values | engine notes |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for r in agree["rows"]:
            if r.get("error"):
                lines.append(f"| {r['model']} | {r['photo']} | | | | | {r['error']} |")
                continue
            notes = "; ".join(r["bf16_warnings"] + r["fp16_warnings"])
            lines.append(
                f"| {r['model']} | {r['photo']} | {r['size'][1]}x{r['size'][0]} | {r['bf16_psnr_db']} | "
                f"{r['fp16_psnr_db']} | {r['fp16_raw_nonfinite']} | {notes} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json, gpu_suite.md and logs/")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks the suite in under a minute")
    ap.add_argument(
        "--official-src",
        type=Path,
        default=None,
        help="the official MoCE-IR source (checkout, or a folder with moce_ir.py and pkgs/)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak, if not in the table")
    ap.add_argument("--device", default=None, help="default: cuda:0, or cpu with --dry-run")
    ap.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # the suite runs each part through this
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    args.device = args.device or ("cpu" if args.dry_run else "cuda:0")
    args.parts = [p.strip() for p in args.parts.split(",")] if args.parts else None
    if args.parts and set(args.parts) - set(PARTS):
        ap.error(f"--parts: unknown {', '.join(sorted(set(args.parts) - set(PARTS)))}; one of {', '.join(PARTS)}")
    args.out = args.out.resolve()
    if args.official_src is not None:
        args.official_src = args.official_src.resolve()
    if args.part:
        return run_part(args)
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
