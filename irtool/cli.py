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
from pathlib import Path
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


def command(*args: Any, typer_app: typer.Typer | None = None, **kwargs: Any) -> Callable:
    """`app.command` (or a sub-app's) for irtool commands: an IrtoolError becomes one line on stderr, exit status 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except IrtoolError as exc:
                fail(str(exc))

        return (typer_app or app).command(*args, **kwargs)(wrapper)

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


# --------------------------------------------------------------------------------------------------------------------
# irtool train


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 1,1,1,2", param_hint=flag) from None


class _TrainView:
    """Renders training events (rank 0 only). On a terminal: a progress bar with loss, it/s and ETA, and under it a
    line with the learning rate, per-task losses and Art's weights; elsewhere (logs, pipes) one plain line per logged
    step. Validations and warnings get a line each; a summary ends the run."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.console = Console(stderr=True, highlight=False)
        self.live = self.progress = self.detail = self.bar = None

    def _start_bar(self, total: int, done: int) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[loss]}"),
            console=self.console,
        )
        self.bar = self.progress.add_task("train", total=total, completed=done, rate="", eta="", loss="")
        self.detail = Text("")
        self.live = Live(Group(self.progress, self.detail), console=self.console, refresh_per_second=4)
        self.live.start()

    def _print(self, text: str) -> None:
        (self.live.console if self.live is not None else self.console).print(text, soft_wrap=True)

    def __call__(self, kind: str, info: dict) -> None:
        import math

        if kind == "start":
            self.console.print(
                f"training {info['parameters']:,} parameters ({info['trainable']:,} trainable) on {info['device']}"
                f" x{info['world_size']}: {info['samples']:,} samples per epoch, {info['total_steps']:,} steps, tasks "
                f"{', '.join(info['tasks'])}, {info['val_pairs']} validation images -> {info['out']}", soft_wrap=True,
            )
            if info["start_step"]:
                self.console.print(f"resuming at step {info['start_step']}")
            if self.console.is_terminal:
                self._start_bar(info["total_steps"], info["start_step"])
        elif kind == "step":
            tasks = " ".join(f"{t} {v:.4f}" for t, v in zip(info["tasks"], info["task_loss"]) if not math.isnan(v))
            weights = ""
            if info.get("weights"):
                weights = " | Art " + " ".join(f"{t} {w:.2f}" for t, w in zip(info["tasks"], info["weights"]))
            eta_s = int(info["eta_s"])
            eta = f"ETA {eta_s // 3600}:{eta_s // 60 % 60:02d}:{eta_s % 60:02d}"
            if self.bar is None:
                self._print(f"step {info['step']}/{info['total_steps']} loss {info['loss']:.4f} lr {info['lr']:.2e} "
                            f"{info['it_per_s']:.2f} it/s {eta} | {tasks}{weights}")
                return
            self.progress.update(self.bar, completed=info["step"], rate=f"{info['it_per_s']:.2f} it/s", eta=eta,
                                 loss=f"loss {info['loss']:.4f}")
            self.detail.plain = f"lr {info['lr']:.2e} | {tasks}{weights}"
        elif kind == "val":
            unit = " dB" if info["metric"] == "psnr" else "%"
            per = " ".join(f"{t} {v:.2f}" for t, v in info["result"].items() if t != "mean")
            self._print(f"step {info['step']}: validation {info['metric']} {info['result']['mean']:.2f}{unit} ({per}); "
                        f"best {info['best']:.2f}{unit} at step {info['best_step']}")
        elif kind == "warning":
            self._print(f"[yellow]warning:[/] {info['message']}")
        elif kind == "end":
            self.close()
            if self.as_json:
                typer.echo(json.dumps(info))
                return
            unit = " dB" if info["metric"] == "psnr" else "%"
            best = (f", best validation {info['metric']} {info['best']:.2f}{unit} at step {info['best_step']}"
                    if info["best_weights"] else "")
            final = f", final loss {info['final_loss']:.4f}" if info["final_loss"] is not None else ""
            self.console.print(
                f"done: {info['trained_steps']} steps in {info['seconds']:.0f} s (step {info['steps']}, "
                f"epoch {info['epochs']:.2f}){final}{best}", soft_wrap=True,
            )
            self.console.print(f"weights: {info['weights']}" + (f", {info['best_weights']}" if info["best_weights"] else ""),
                               soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@command()
def train(
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder: weights, training state, logs.", rich_help_panel="Run")] = "runs/train",
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Named recipe: moce_ir_s-aio3, moce_ir-aio3, moce_ir_s-aio5, moce_ir-aio5, custom (default).", rich_help_panel="Run")] = None,
    config_file: Annotated[Optional[str], typer.Option("--config-file", help="JSON or TOML file of config fields, laid over the preset (--print-config writes one).", rich_help_panel="Run")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config as JSON and exit.", rich_help_panel="Run")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, bit-exactly.", rich_help_panel="Run")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (default), cpu, cuda, cuda:N, mps; under torchrun each process takes cuda:LOCAL_RANK.", rich_help_panel="Run")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.", rich_help_panel="Run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON object.", rich_help_panel="Run")] = False,
    clean_dir: Annotated[Optional[str], typer.Option("--clean-dir", help="Folder of clean photos, degraded on the fly by --tasks.", rich_help_panel="Data")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Synthetic degradations for --clean-dir: noise,rain,haze,blur,lowlight,jpeg (default all).", rich_help_panel="Data")] = None,
    data_root: Annotated[Optional[str], typer.Option("--data-root", help="Root folder of the benchmark datasets (presets).", rich_help_panel="Data")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Training patch side in px (128).", rich_help_panel="Data")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Patches per process and step (8).", rich_help_panel="Data")] = None,
    augment: Annotated[Optional[str], typer.Option("--augment", help="dihedral (8 flips/rotations, identity included), official (7, never identity), none.", rich_help_panel="Data")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="Data loader processes (2).", rich_help_panel="Data")] = None,
    val_dir: Annotated[Optional[str], typer.Option("--val-dir", help="Clean photos to validate on (else --val-count images per task are held out).", rich_help_panel="Data")] = None,
    val_count: Annotated[Optional[int], typer.Option("--val-count", help="Images held out per task for validation (4; 0: no validation, no best).", rich_help_panel="Data")] = None,
    val_size: Annotated[Optional[int], typer.Option("--val-size", help="Centre crop of validation images in px (256; 0: whole).", rich_help_panel="Data")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Network: moce_ir (default) or lora_ir (with --stage).", rich_help_panel="Network")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Network config: MoCE_IR, MoCE_IR_S (default), tiny; LoRA-IR: setting1, tiny.", rich_help_panel="Network")] = None,
    dim: Annotated[Optional[int], typer.Option("--dim", help="Base width.", rich_help_panel="Network")] = None,
    blocks: Annotated[Optional[str], typer.Option("--blocks", help="Encoder blocks per level then latent, e.g. 4,6,6,8.", rich_help_panel="Network")] = None,
    dec_blocks: Annotated[Optional[str], typer.Option("--dec-blocks", help="Decoder (MoCE) blocks per level, e.g. 2,4,4.", rich_help_panel="Network")] = None,
    refinement_blocks: Annotated[Optional[int], typer.Option("--refinement-blocks", rich_help_panel="Network")] = None,
    heads: Annotated[Optional[str], typer.Option("--heads", help="Attention heads per level, e.g. 1,2,4,8.", rich_help_panel="Network")] = None,
    experts: Annotated[Optional[int], typer.Option("--experts", help="Complexity experts per MoCE layer (4).", rich_help_panel="Network")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", rich_help_panel="Network")] = None,
    complexity: Annotated[Optional[bool], typer.Option("--complexity/--no-complexity", help="MoCE-IR's complexity bias in the balance loss (on by default).", rich_help_panel="Network")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from these weights (LoRA-IR experts: the base stage's; router: a router file's CLIP tower).", rich_help_panel="Network")] = None,
    router: Annotated[Optional[str], typer.Option("--router", help="LoRA-IR base/experts stages: the trained router checkpoint (frozen).", rich_help_panel="Network")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="Pixel loss: l1, psnr (LoRA-IR), ce (LoRA-IR router).", rich_help_panel="Losses")] = None,
    fft_weight: Annotated[Optional[float], typer.Option("--fft-weight", help="FFT-L1 weight (presets 0.1; 0 off).", rich_help_panel="Losses")] = None,
    balance_weight: Annotated[Optional[float], typer.Option("--balance-weight", help="Routing balance loss weight (0.01).", rich_help_panel="Losses")] = None,
    reweight: Annotated[Optional[str], typer.Option("--reweight", help="none, or art: Art's active task reweighting.", rich_help_panel="Losses")] = None,
    art_tau: Annotated[Optional[float], typer.Option("--art-tau", help="Art temperature (0.1).", rich_help_panel="Losses")] = None,
    art_ema: Annotated[Optional[float], typer.Option("--art-ema", help="Art moving-average coefficient (0.01).", rich_help_panel="Losses")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate (2e-4).", rich_help_panel="Optimisation")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", rich_help_panel="Optimisation")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps to train.", rich_help_panel="Optimisation")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs to train (instead of --steps).", rich_help_panel="Optimisation")] = None,
    schedule_unit: Annotated[Optional[str], typer.Option("--schedule-unit", help="Count warm-up and cosine in epoch or step.", rich_help_panel="Optimisation")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Linear warm-up length (schedule units).", rich_help_panel="Optimisation")] = None,
    schedule_length: Annotated[Optional[int], typer.Option("--schedule-length", help="Where the cosine ends (default: the end of training).", rich_help_panel="Optimisation")] = None,
    lr_min: Annotated[Optional[float], typer.Option("--lr-min", rich_help_panel="Optimisation")] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm (0: off).", rich_help_panel="Optimisation")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 autocast on CUDA), bf16, fp32.", rich_help_panel="Optimisation")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Default: on for CUDA.", rich_help_panel="Optimisation")] = None,
    compile_model: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the training step.", rich_help_panel="Optimisation")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", rich_help_panel="Optimisation")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="LoRA-IR stage: router, base, experts.", rich_help_panel="Network")] = None,
    train_all: Annotated[Optional[bool], typer.Option("--train-all", help="LoRA-IR expert stage: train every parameter (released code), not only LoRA (paper).", rich_help_panel="Network")] = None,
    ckpt_every: Annotated[Optional[int], typer.Option("--ckpt-every", help="Checkpoint every N steps (and at the end).", rich_help_panel="Run")] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", help="Validate every N steps (default: at checkpoints).", rich_help_panel="Run")] = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", help="Log every N steps (10).", rich_help_panel="Run")] = None,
) -> None:
    """Train an all-in-one network on a mix of degradations (one process, or many under torchrun)."""
    import os

    from .train import presets

    fields = {
        "data_root": data_root, "patch_size": patch_size, "batch_size": batch_size, "augment": augment,
        "num_workers": num_workers, "val_dir": val_dir, "val_count": val_count, "val_size": val_size,
        "arch": arch, "variant": config, "with_complexity": complexity, "init": init, "router": router,
        "pixel_loss": loss, "fft_weight": fft_weight,
        "balance_weight": balance_weight, "reweight": reweight, "art_tau": art_tau, "art_ema": art_ema, "lr": lr,
        "weight_decay": weight_decay, "steps": steps, "epochs": epochs, "schedule_unit": schedule_unit,
        "warmup": warmup, "schedule_length": schedule_length, "lr_min": lr_min, "grad_clip": grad_clip,
        "precision": precision, "channels_last": channels_last, "compile": compile_model, "seed": seed,
        "stage": stage, "train_all": train_all, "ckpt_every": ckpt_every, "val_every": val_every,
        "log_every": log_every,
    }
    overrides = {k: v for k, v in fields.items() if v is not None}
    model = {
        "dim": dim, "num_blocks": blocks and _int_list(blocks, "--blocks"),
        "num_dec_blocks": dec_blocks and _int_list(dec_blocks, "--dec-blocks"),
        "num_refinement_blocks": refinement_blocks, "heads": heads and _int_list(heads, "--heads"),
        "num_experts": experts, "top_k": top_k,
    }
    model = {k: v for k, v in model.items() if v is not None}
    if model:
        overrides["model"] = model
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    if resume:
        if preset or config_file or clean_dir or task_list or model:
            fail("--resume continues the recipe saved in --out; drop --preset/--config-file/--clean-dir/--tasks/network flags", 2)
        cfg = presets.resume_config(out, overrides)
    else:
        cfg = presets.resolve(preset, config_file, overrides, clean_dir=clean_dir, tasks=task_list)
    if print_config:
        typer.echo(cfg.to_json())
        return

    from .train.loop import train as run_training

    main_process = int(os.environ.get("RANK", "0")) == 0
    view = _TrainView(as_json) if main_process else None
    try:
        run_training(cfg, out, resume=resume, device=device, threads=threads, on_event=view)
    finally:
        if view is not None:
            view.close()


# --------------------------------------------------------------------------------------------------------------------
# irtool weights ... : the manifest's checkpoints and the user's own (irtool/weights.py does the work)

weights_app = typer.Typer(
    name="weights",
    help="Checkpoints: list the official ones, fetch, import your own, verify, convert to safetensors, remove.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def _weights_command(*args: Any, **kwargs: Any) -> Callable:
    return command(*args, typer_app=weights_app, **kwargs)


_TRUST_OPTION = typer.Option("--trust-checkpoint", help="Allow pickled objects beyond plain tensors (runs code from the file).")
_JSON_OPTION = typer.Option("--json", help="Print JSON instead of text.")


def _mb(size: Optional[int], approx: bool = False) -> str:
    if size is None:
        return "?"
    return f"{'≈' if approx else ''}{size / 1e6:,.{0 if size >= 1e7 else 1}f} MB"


def _stdout():
    from rich.console import Console

    return Console(highlight=False)


@_weights_command("list")
def weights_list(as_json: Annotated[bool, _JSON_OPTION] = False) -> None:
    """List the known checkpoints: status (cached, imported, partial, missing), setting and size."""
    from . import weights

    rows = weights.statuses()
    if as_json:
        typer.echo(json.dumps({"cache": str(weights.cache_dir()), "models": [r.to_dict() for r in rows]}))
        return
    from rich.table import Table

    colours = {"cached": "green", "imported": "green", "partial": "yellow", "missing": "dim"}
    table = Table(caption=f"cache: {weights.cache_dir()}", caption_justify="left")
    for column in ("name", "official id", "setting", "status", "size"):
        table.add_column(column, no_wrap=column != "status")
    for row in rows:
        status = f"[{colours[row.status]}]{row.status}[/]"
        if row.partial_bytes:
            status += f" ({_mb(row.partial_bytes)} downloaded, fetch resumes)"
        official = "(local)" if row.local else (row.aliases[0] if row.aliases else "")
        setting = row.setting or f"own {row.variant or row.arch}"
        table.add_row(row.name, official, setting, status, _mb(row.size, row.size_is_approx))
    _stdout().print(table)


@_weights_command("fetch")
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="Manifest names or official ids (see `irtool weights list`).")],
    url: Annotated[
        Optional[list[str]],
        typer.Option("--url", help="Download from URL instead of the manifest's; ROLE=URL for an entry with several files."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if the file is cached.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server before giving up.", min=1)] = 30.0,
    retries: Annotated[int, typer.Option(help="Resume this many times after a lost connection.", min=0)] = 2,
    trust_checkpoint: Annotated[bool, _TRUST_OPTION] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Download checkpoints into the cache, verify them and record their sha256.

    An interrupted download resumes where it stopped. Set IRTOOL_WEIGHTS_MIRROR=BASE_URL to download every file from BASE_URL/NAME/FILENAME instead.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from . import weights

    if url and len(names) > 1:
        fail("--url: name one checkpoint to fetch from a URL", code=2)
    console = _stderr()
    failed = 0
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bars:
        for name in names:
            tasks: dict[str, Any] = {}

            def progress(filename: str, done: int, total: Optional[int], name: str = name, tasks: dict = tasks) -> None:
                if filename not in tasks:
                    tasks[filename] = bars.add_task(f"{name} {filename}", total=total)
                bars.update(tasks[filename], completed=done, total=total)

            try:
                urls = weights.url_overrides(name, url) if url else None
                results += weights.fetch(name, urls=urls, force=force, progress=progress, timeout=timeout, retries=retries,
                                         trust=trust_checkpoint)
            except IrtoolError as exc:
                console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
                failed += 1
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results]))
    else:
        out = _stdout()
        for r in results:
            if r.already:
                out.print(f"{r.name} ({r.role}): already in the cache: {r.path}", soft_wrap=True)
                continue
            resumed = f", resumed at {_mb(r.resumed_from)}" if r.resumed_from else ""
            out.print(f"{r.name} ({r.role}): {_mb(r.size)} saved to {r.path}{resumed}; sha256 {r.sha256}; {r.checked}",
                      soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


@_weights_command("import")
def weights_import(
    path: Annotated[Path, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors) or a folder holding last.ckpt.")],
    name: Annotated[
        Optional[str],
        typer.Option("--name", help="Manifest entry it is (checked), or a name of your own; default: from the file name."),
    ] = None,
    role: Annotated[Optional[str], typer.Option("--role", help="Which file of a several-file entry: weights, ir or router.")] = None,
    trust_checkpoint: Annotated[bool, _TRUST_OPTION] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a different file already stored under this name.")] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Check a checkpoint and store it in the cache as safetensors, usable as --model NAME.

    The architecture and config are read off the tensors and the file is loaded strictly; with --name of a manifest
    entry it must be that entry's network and variant (and its sha256, where the manifest has one).
    """
    from . import weights

    with _stderr().status(f"importing {path}"):
        got = weights.import_checkpoint(path, name=name, role=role, trust=trust_checkpoint, force=force)
    if as_json:
        typer.echo(json.dumps(got.to_dict()))
        return
    what = f"{got.arch} {got.variant}" if got.variant else got.arch
    verb = "was already imported as" if got.already else "imported as"
    _stdout().print(f"{got.source} {verb} {got.name} ({got.role}: {what}, sha256 {got.source_sha256}) -> {got.path}; "
                    f"use it as --model {got.name}", soft_wrap=True)


@_weights_command("verify")
def weights_verify(
    name: Annotated[Optional[str], typer.Argument(help="Entry to verify; default: everything in the cache.")] = None,
    trust_checkpoint: Annotated[bool, _TRUST_OPTION] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Re-hash cached files and load each strictly; exit status 1 if any fails.

    Files are compared with the manifest's sha256 where it has one, else with the one recorded when they were stored.
    """
    from . import weights

    with _stderr().status("verifying"):
        results = weights.verify(name, trust=trust_checkpoint)
    bad = [r for r in results if not r.ok]
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results]))
    elif not results:
        _stdout().print(f"nothing in the cache to verify ({weights.cache_dir()})")
    else:
        for r in results:
            mark = "[green]ok[/]" if r.ok else "[bold red]FAILED[/]"
            _stdout().print(f"{mark} {r.name} ({r.role}) {r.path}: {r.message}", soft_wrap=True)
    for r in bad:
        _stderr().print(f"[bold red]error:[/] {r.name} ({r.role}): {r.message}", soft_wrap=True)
    raise typer.Exit(1 if bad else 0)


@_weights_command("convert")
def weights_convert(
    path: Annotated[Path, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors) or a folder.")],
    out: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    trust_checkpoint: Annotated[bool, _TRUST_OPTION] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Write a checkpoint as safetensors, its architecture and config in the metadata (cache untouched)."""
    from . import weights

    with _stderr().status(f"converting {path}"):
        got = weights.convert(path, out, trust=trust_checkpoint, force=force)
    if as_json:
        typer.echo(json.dumps(got.to_dict()))
        return
    what = f"{got.arch} {got.variant}" if got.variant else got.arch
    _stdout().print(f"{got.path}: {what}, {_mb(got.size)}, sha256 {got.sha256} (from {got.source})", soft_wrap=True)


@_weights_command("remove")
def weights_remove(
    name: Annotated[str, typer.Argument(help="Entry whose cached files to delete (a local entry is forgotten).")],
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Delete an entry's fetched, imported and partly downloaded files from the cache."""
    from . import weights

    got = weights.remove(name)
    if as_json:
        typer.echo(json.dumps(got.to_dict()))
        return
    _stdout().print(f"{got.name}: removed {', '.join(str(p) for p in got.paths) or 'the local entry'} ({_mb(got.freed)} freed)",
                    soft_wrap=True)


@_weights_command("show")
def weights_show(
    name: Annotated[str, typer.Argument(help="Manifest name, official id or local entry.")],
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Everything about one checkpoint: source, licence, files, the paper's PSNR/SSIM, cache state."""
    from . import weights

    info = weights.describe(name)
    if as_json:
        typer.echo(json.dumps(info))
        return
    from rich.table import Table

    out = _stdout()
    status = info["status"]
    network = f"{info['arch']} {info['variant']}" if info.get("variant") else info["arch"]
    out.print(f"[bold]{info['name']}[/] ({', '.join(info.get('aliases', [])) or 'local'}): {network}, "
              f"{info.get('setting') or 'own import'}; {status['status']}", soft_wrap=True)
    if info.get("tasks"):
        out.print(f"tasks: {', '.join(info['tasks'])}")
    if info.get("classes"):
        out.print(f"router classes: {', '.join(info['classes'])}")
    source = info.get("source") or {}
    for key in ("paper", "repo", "license", "file"):
        if source.get(key):
            out.print(f"{key}: {source[key]}", soft_wrap=True)
    for spec in info["files"]:
        if info.get("local"):
            where = "your import"
        elif spec.get("url"):
            where = spec["url"]
        elif spec.get("drive_folder"):
            where = f"Google Drive folder {spec['drive_folder']}, file {spec.get('drive_path')}"
        else:
            where = "no download link"
        size = _mb(spec.get("size") or spec.get("approx_size"), not spec.get("size"))
        here = status["files"].get(spec["role"], "not in the cache")
        out.print(f"file {spec['role']} ({spec['arch']}): {spec['filename']}, {size}, "
                  f"sha256 {spec.get('sha256') or 'unpublished'}; from {where}; local: {here}", soft_wrap=True)
    if info.get("reported"):
        table = Table(title="reported in the paper")
        for column in ("benchmark", "PSNR", "SSIM"):
            table.add_column(column)
        for bench, score in info["reported"].items():
            table.add_row(bench, f"{score['psnr']:.2f}", f"{score['ssim']:.3f}")
        out.print(table)
    if info.get("notes"):
        out.print(f"notes: {info['notes']}", soft_wrap=True)


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
