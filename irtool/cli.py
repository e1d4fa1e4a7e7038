"""The `irtool` command line: thin Typer commands over the library.

Each command parses its options, calls one library function and renders the result. Heavy modules (torch and
everything that imports it) are imported inside the commands, so `irtool --help` and `irtool --version` stay instant.

Exit status: 0 all done; 1 an input or checkpoint could not be processed (one line on stderr says which and why);
2 bad usage (Typer's own); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from . import __version__
from .errors import IrtoolError

app = typer.Typer(
    name="irtool",
    help="All-in-one image restoration: remove noise, rain, haze, blur and low light with MoCE-IR or LoRA-IR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit."""
    _stderr().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def command(*args: Any, **kwargs: Any) -> Callable:
    """`app.command` for irtool commands: an IrtoolError becomes one line on stderr and exit status 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except IrtoolError as exc:
                fail(str(exc))

        return app.command(*args, **kwargs)(wrapper)

    return register


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"irtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """All-in-one image restoration: remove noise, rain, haze, blur and low light with MoCE-IR or LoRA-IR."""


@command()
def inspect(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors), folder or manifest name.")],
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow pickled objects beyond plain tensors (runs code from the file).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Detect a checkpoint's architecture and config, load it strictly, and describe it."""
    from .loading import build_model, read_state_dict, resolve_source

    path = resolve_source(checkpoint)
    sd, metadata = read_state_dict(path, trust=trust_checkpoint)
    model = build_model(sd, metadata, path)
    params = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(path),
        "arch": model.arch,
        "config": model.config.to_dict(),
        "parameters": params,
        "tensors": len(sd),
        "moce_layers": getattr(model, "moce_layer_names", []),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path.name}: {info['arch']}", show_header=False)
    table.add_row("parameters", f"{params:,}")
    table.add_row("tensors", str(len(sd)))
    for key, value in info["config"].items():
        table.add_row(key, str(value))
    if info["moce_layers"]:
        table.add_row("MoCE layers", str(len(info["moce_layers"])))
    Console().print(table)


_BENCH_HELP = {
    "weights": "Checkpoint file, folder or manifest name. Default: random weights of --config.",
    "config": "Named config for random weights: MoCE_IR_S, MoCE_IR, or arch:variant (moce_ir:tiny).",
    "gpu": "Run on CUDA device N (same as --device cuda:N).",
    "device": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps.",
    "sizes": "Image sizes: N for N x N, WxH otherwise. Default 256,512,1024 on GPUs, 256 on CPUs.",
    "batch": "Batch sizes, e.g. 1,4.",
    "precision": "fp32, bf16, fp16 (autocast). Default fp32,bf16 on GPUs, fp32 on CPUs.",
    "experts": "sparse (only the chosen experts), dense (all experts), eN (expert N in every layer).",
    "path": "fast (irtool's inference path) and/or reference (the plain formulation, for comparison).",
    "compile": "Also time torch.compile'd forwards of the fast path (compiles per case: minutes on a small CPU).",
    "cuda_graphs": "Also time CUDA graph replays where the expert choice is known in advance (dense, eN).",
    "warmup": "Untimed runs before timing.",
    "runs": "Timed runs per case. Default 20 on GPUs, 5 on CPUs.",
    "breakdown": "Time router, trunk and experts in an extra synchronised pass.",
    "threads": "CPU threads for torch (default: torch's choice).",
    "tune_allocator": "Keep freed CPU memory for reuse (glibc): much faster CPU inference, memory kept until exit.",
}


@command()
def bench(
    weights: Annotated[Optional[str], typer.Option("--weights", "--model", "-m", help=_BENCH_HELP["weights"])] = None,
    config: Annotated[str, typer.Option(help=_BENCH_HELP["config"])] = "MoCE_IR_S",
    gpu: Annotated[Optional[int], typer.Option("--gpu", help=_BENCH_HELP["gpu"])] = None,
    device: Annotated[str, typer.Option(help=_BENCH_HELP["device"])] = "auto",
    sizes: Annotated[Optional[str], typer.Option(help=_BENCH_HELP["sizes"])] = None,
    batch: Annotated[str, typer.Option(help=_BENCH_HELP["batch"])] = "1",
    precision: Annotated[Optional[str], typer.Option(help=_BENCH_HELP["precision"])] = None,
    experts: Annotated[str, typer.Option(help=_BENCH_HELP["experts"])] = "sparse,dense",
    path: Annotated[str, typer.Option(help=_BENCH_HELP["path"])] = "fast",
    compile: Annotated[bool, typer.Option("--compile", help=_BENCH_HELP["compile"])] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help=_BENCH_HELP["cuda_graphs"])] = False,
    warmup: Annotated[int, typer.Option(help=_BENCH_HELP["warmup"])] = 2,
    runs: Annotated[Optional[int], typer.Option(help=_BENCH_HELP["runs"])] = None,
    breakdown: Annotated[bool, typer.Option("--breakdown", "--profile", help=_BENCH_HELP["breakdown"])] = False,
    threads: Annotated[Optional[int], typer.Option(help=_BENCH_HELP["threads"])] = None,
    tune_allocator: Annotated[bool, typer.Option(help=_BENCH_HELP["tune_allocator"])] = True,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow pickled objects beyond plain tensors (runs its code).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Measure latency, throughput and peak memory per size, batch, precision and expert mode."""
    if gpu is not None and device != "auto":
        raise typer.BadParameter("give --gpu or --device, not both", param_hint="--gpu")
    from . import bench as bench_mod
    from . import runtime
    from .loading import load_model, resolve_device

    tuned = runtime.tune_cpu_allocator() if tune_allocator else False
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
    if weights:
        model, source = load_model(weights, device=dev, trust=trust_checkpoint), weights
    else:
        model, source = bench_mod.random_model(config), f"random weights ({config})"

    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    total = bench_mod.count_cases(plan, dev)
    done = [0]

    def progress(row: "bench_mod.BenchRow") -> None:
        done[0] += 1
        status = row.error or f"{row.median_ms:.1f} ms"
        err.print(f"[dim][{done[0]}/{total}] {row.label}: {status}[/]")

    report = bench_mod.run_bench(model, dev, plan, source=source, on_row=progress)
    report.allocator_tuned = tuned
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    _print_bench(report)


def _print_bench(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{report.model['source']} on {report.device} ({report.device_name}), torch {report.torch_version}"
    table = Table(title=title)
    numeric = ("median ms", "p90 ms", "MP/s", "peak MB")
    for col in ("case", *numeric, "vs fp32", "router/experts/trunk"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in report.rows:
        if r.error:
            table.add_row(r.label, f"[red]{r.error}[/]", *[""] * 5)
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
            parts = "/".join(f"{v:.0f}" for v in shares) + " %"
        table.add_row(
            r.label, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.megapixels_per_s:.3f}", f"{r.peak_memory_mb:.0f}",
            check, parts,
        )
    console = Console()
    console.print(table)
    notes = [f"threads {report.threads}", f"allocator tuned: {'yes' if report.allocator_tuned else 'no'}"]
    if report.load_average:
        notes.append(f"load average {report.load_average[0]:.2f} -> {report.load_average[1]:.2f}")
    notes.append("peak memory: " + ", ".join(sorted({r.memory_kind for r in report.rows if r.memory_kind})))
    console.print("; ".join(notes))
    summary = report.summary()
    for tag, ratio in summary["dense_over_sparse"].items():
        console.print(f"dense / sparse experts, {tag}: {ratio:.2f}x the time")
    for tag, ratio in summary["reference_over_fast"].items():
        console.print(f"reference / fast path, {tag}: {ratio:.2f}x the time")
    for tag, ratio in summary["eager_over_compiled"].items():
        console.print(f"eager / torch.compile, {tag}: {ratio:.2f}x the time")
    for tag, ratio in summary["eager_over_graph"].items():
        console.print(f"eager / CUDA graph, {tag}: {ratio:.2f}x the time")


def main() -> None:
    """Console entry point: run the app, turning irtool's errors into one line and an exit status."""
    try:
        app()
    except IrtoolError as exc:
        _stderr().print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        sys.exit(130)
