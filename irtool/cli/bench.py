"""`irtool bench`: latency, throughput and peak memory per size, batch, precision and expert mode."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import IrtoolError
from . import output
from .options import Device, GpuNumber, Trust, json_flag

#: what bench measures when told no model: the one inside the package, which needs no download
BUILT_IN = "irtool.default"

_HELP = {
    "weights": "Checkpoint file, folder or manifest name. Default: the built-in model (irtool.default).",
    "variant": "Random weights of a named config instead: MoCE_IR_S, MoCE_IR, or arch:variant (moce_ir:tiny).",
    "sizes": "Image sizes: N for N x N, WxH otherwise. Default 256,512,1024 on GPUs, 256 on CPUs.",
    "batch": "Batch sizes, e.g. 1,4.",
    "precision": "fp32, bf16, fp16 (autocast). Default fp32,bf16 on GPUs, fp32 on CPUs.",
    "experts": "sparse (only the chosen experts), dense (all experts), eN (expert N in every layer). A network "
    "without routing (BioIR) runs its one path, shown as 'none'.",
    "path": "fast (irtool's inference path) and/or reference (the plain formulation, for comparison).",
    "compile": "Also time torch.compile'd forwards of the fast path (compiles per case: minutes on a small CPU).",
    "cuda_graphs": "Also time CUDA graph replays where the expert choice is known in advance (dense, eN).",
    "warmup": "Untimed runs before timing.",
    "runs": "Timed runs per case. Default 20 on GPUs, 5 on CPUs.",
    "breakdown": "Time router, trunk and experts in an extra synchronised pass.",
    "threads": "CPU threads for torch (default: torch's choice).",
    "tune_allocator": "Keep freed CPU memory for reuse (glibc): much faster CPU inference, memory kept until exit.",
}


def bench(
    weights: Annotated[str | None, typer.Option("--weights", "--model", "-m", help=_HELP["weights"])] = None,
    variant: Annotated[str | None, typer.Option("--variant", help=_HELP["variant"])] = None,
    gpu: GpuNumber = None,
    device: Device = "auto",
    sizes: Annotated[str | None, typer.Option(help=_HELP["sizes"])] = None,
    batch: Annotated[str, typer.Option(help=_HELP["batch"])] = "1",
    precision: Annotated[str | None, typer.Option(help=_HELP["precision"])] = None,
    experts: Annotated[str, typer.Option(help=_HELP["experts"])] = "sparse,dense",
    path: Annotated[str, typer.Option(help=_HELP["path"])] = "fast",
    compile: Annotated[bool, typer.Option("--compile", help=_HELP["compile"])] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help=_HELP["cuda_graphs"])] = False,
    warmup: Annotated[int, typer.Option(help=_HELP["warmup"])] = 2,
    runs: Annotated[int | None, typer.Option(help=_HELP["runs"])] = None,
    breakdown: Annotated[bool, typer.Option("--breakdown", "--profile", help=_HELP["breakdown"])] = False,
    threads: Annotated[int | None, typer.Option(help=_HELP["threads"])] = None,
    tune_allocator: Annotated[bool, typer.Option(help=_HELP["tune_allocator"])] = True,
    trust_checkpoint: Trust = False,
    as_json: Annotated[bool, json_flag("Print one JSON object instead of a table.")] = False,
) -> None:
    """Measure latency, throughput and peak memory per size, batch, precision and expert mode."""
    if gpu is not None and device != "auto":
        raise typer.BadParameter("give --gpu or --device, not both", param_hint="--gpu")
    from .. import bench as bench_mod
    from ..devices import speed
    from ..devices.policy import resolve_device
    from ..loading import load_model

    tuned = speed.tune_cpu_allocator() if tune_allocator else False
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(f"cuda:{gpu}" if gpu is not None else device)
    on_gpu = dev.type == "cuda"
    try:
        plan = bench_mod.BenchPlan(
            sizes=bench_mod.parse_sizes(sizes or ("256,512,1024" if on_gpu else "256")),
            batches=bench_mod.parse_list(batch, "--batch", int),
            precisions=bench_mod.parse_list(precision or ("fp32,bf16" if on_gpu else "fp32"), "--precision"),
            experts=bench_mod.parse_list(experts, "--experts"),
            paths=bench_mod.parse_list(path, "--path"),
            compile=compile,
            cuda_graphs=cuda_graphs,
            warmup=warmup,
            runs=runs if runs is not None else (20 if on_gpu else 5),
            breakdown=breakdown,
        )
    except IrtoolError as exc:  # a malformed option value is a usage error (exit 2), as Typer reports its own
        raise typer.BadParameter(str(exc)) from None
    if weights and variant:
        raise typer.BadParameter("give --weights or --variant (random weights), not both", param_hint="--variant")
    if variant:
        model, source = bench_mod.random_model(variant), f"random weights ({variant})"
        output.note(f"benchmarking {source}: speed and memory only, not a trained model")
    else:
        weights = weights or BUILT_IN
        model, source = load_model(weights, device=dev, trust=trust_checkpoint), weights
    err = output.stderr()
    total = bench_mod.count_cases(plan, dev, model)
    done = [0]

    def progress(row: bench_mod.BenchRow) -> None:
        done[0] += 1
        output.line(f"[{done[0]}/{total}] {row.label}: {row.error or f'{row.median_ms:.1f} ms'}", err)

    report = bench_mod.run_bench(model, dev, plan, source=source, on_row=progress)
    report.allocator_tuned = tuned
    if as_json:
        output.echo_json(report.to_dict())
        return
    _print_bench(report)


def _print_bench(report: Any) -> None:
    from rich.table import Table

    title = f"{report.model['source']} on {report.device} ({report.device_name}), torch {report.torch_version}"
    random = str(report.model["source"]).startswith("random weights")
    caption = output.plain(f"{report.model['source']}: not a trained model") if random else None
    table = Table(
        title=output.plain(title), caption=caption, show_edge=False, pad_edge=False, box=None, header_style="bold"
    )
    numeric = ("median ms", "p90 ms", "MP/s", "peak MB")
    # fits 80 columns (as restore's table does: no frame; the breakdown column only when measured): figures are never
    # cut, a long case name wraps
    broken_down = any(r.breakdown_ms for r in report.rows)
    for col in ("case", *numeric, "vs fp32", *(["r/e/t %"] if broken_down else [])):
        table.add_column(col, justify="right" if col in numeric else "left", no_wrap=col != "case")
    for r in report.rows:
        if r.error:
            table.add_row(r.label, output.plain(r.error, style="red"), *[""] * (len(table.columns) - 2))
            continue
        if r.psnr_db is None:
            check = ""
        elif r.max_abs_diff is not None and r.max_abs_diff < 1e-4:
            check = f"|Δ| {r.max_abs_diff:.0e}"
        else:
            check = f"{r.psnr_db:.1f} dB"
        parts = ""
        if r.breakdown_ms:
            whole = sum(r.breakdown_ms.values()) or 1.0
            shares = (100 * r.breakdown_ms.get(k, 0.0) / whole for k in ("router", "experts", "trunk"))
            parts = "/".join(f"{v:.0f}" for v in shares)
        table.add_row(r.label, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.megapixels_per_s:.3f}",
                      f"{r.peak_memory_mb:.0f}", check, *([parts] if broken_down else []))  # fmt: skip
    console = output.stdout()
    console.print(table)
    if broken_down:
        output.line("r/e/t %: the time's shares of router, experts and trunk", console)
    notes = [f"threads {report.threads}", f"allocator tuned: {'yes' if report.allocator_tuned else 'no'}"]
    if report.load_average:
        notes.append(f"load average {report.load_average[0]:.2f} -> {report.load_average[1]:.2f}")
    notes.append("peak memory: " + ", ".join(sorted({r.memory_kind for r in report.rows if r.memory_kind})))
    output.line("; ".join(notes), console)
    for note in report.notes:
        output.line(note, console)
    summary = report.summary()
    for key, what in (("dense_over_sparse", "dense / sparse experts"), ("reference_over_fast", "reference / fast path"),
                      ("eager_over_compiled", "eager / torch.compile"), ("eager_over_graph", "eager / CUDA graph")):  # fmt: skip
        for tag, ratio in summary[key].items():
            output.line(f"{what}, {tag}: {ratio:.2f}x the time", console)
