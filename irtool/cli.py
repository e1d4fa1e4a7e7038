"""The `irtool` command line: thin Typer commands over the library.

Each command parses its options, calls one library function and renders the result. Heavy modules (torch and
everything that imports it) are imported inside the commands, so `irtool --help` and `irtool --version` stay instant.

Exit status: 0 all done; 1 an input or checkpoint could not be processed (one line on stderr says which and why);
2 bad usage (Typer's own); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__, jsonout
from .errors import ConfigGuessWarning, IrtoolError, UsageError

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

    return Console(stderr=True, highlight=False, emoji=False)


def _error_line(message: str) -> None:
    """One line on stderr; the message is printed literally (file names may contain [brackets] or :colons:)."""
    from rich.markup import escape

    _stderr().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit."""
    _error_line(message)
    raise typer.Exit(code)


def _warning_line(
    message: Any,
    category: type,
    filename: str,
    lineno: int,
    file: Any = None,
    line: Any = None,
    *,
    default: Callable = warnings.showwarning,
) -> None:
    """irtool's own warnings (an assumed config field) as one literal line on stderr; others as Python shows them."""
    if issubclass(category, ConfigGuessWarning):
        from rich.markup import escape

        _stderr().print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
    else:
        default(message, category, filename, lineno, file, line)


def command(*args: Any, typer_app: typer.Typer | None = None, **kwargs: Any) -> Callable:
    """`app.command` (or a sub-app's) for irtool commands: an IrtoolError becomes one line on stderr, exit status 1;
    irtool's warnings become one line each."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("always", ConfigGuessWarning)
                    warnings.showwarning = _warning_line
                    return fn(*a, **kw)
            except UsageError as exc:
                fail(str(exc), code=2)
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
        bool | None,
        typer.Option(
            "--version", "-V", callback=_version_callback, is_eager=True, metavar="", help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """All-in-one image restoration: remove noise, rain, haze, blur and low light with MoCE-IR or LoRA-IR."""


_CONFIG_HELP = (
    "FIELD=VALUE (repeatable): a config field the weights cannot show, e.g. top_k=2; checked against the "
    "tensors. VALUE is read as JSON (2, 2.0, [1,2], true), else as text."
)
_CONFIG_OPTION = typer.Option("--config", help=_CONFIG_HELP, show_default=False)
_ROUTER_CONFIG_OPTION = typer.Option(
    "--router-config",
    help="FIELD=VALUE (repeatable): the same for LoRA-IR's CLIP router, e.g. num_heads=3.",
    show_default=False,
)


def _fields(values: list[str] | None, flag: str) -> dict[str, Any] | None:
    """`--config top_k=2 --config heads=[1,2]` -> {"top_k": 2, "heads": [1, 2]} (None when not given)."""
    if not values:
        return None
    fields: dict[str, Any] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter("expected FIELD=VALUE, e.g. top_k=2", param_hint=f"{flag} {item}")
        try:
            fields[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            fields[key.strip()] = text
    return fields


@command()
def inspect(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors), folder or manifest name.")
    ],
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            metavar="",
            help="Allow pickled objects beyond plain tensors (runs code from the file).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print one JSON object instead of a table.")
    ] = False,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
    router_config: Annotated[list[str] | None, _ROUTER_CONFIG_OPTION] = None,
) -> None:
    """Detect a checkpoint's architecture and config, load it strictly, and describe it."""
    from .loading import build_model, detect, read_state_dict, resolve_source

    fields, router_fields = _fields(config, "--config"), _fields(router_config, "--router-config")
    path = resolve_source(checkpoint)
    sd, metadata = read_state_dict(path, trust=trust_checkpoint)
    if detect(sd, path)[0].name == "clip_router":  # a router file on its own: either option states its fields
        model = build_model(sd, metadata, path, {**(fields or {}), **(router_fields or {})}, option="router_config")
    elif router_fields:
        fail(f"--router-config: {path} is not a LoRA-IR router file", 2)
    else:
        model = build_model(sd, metadata, path, fields)
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
        typer.echo(jsonout.dumps(info))
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
        raise typer.BadParameter(
            f"{text!r}: expected comma-separated integers, e.g. 1,1,1,2", param_hint=flag
        ) from None


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
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[loss]}"),
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
                f"{', '.join(info['tasks'])}, {info['val_pairs']} validation images -> {info['out']}",
                soft_wrap=True,
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
                self._print(
                    f"step {info['step']}/{info['total_steps']} loss {info['loss']:.4f} lr {info['lr']:.2e} "
                    f"{info['it_per_s']:.2f} it/s {eta} | {tasks}{weights}"
                )
                return
            self.progress.update(
                self.bar,
                completed=info["step"],
                rate=f"{info['it_per_s']:.2f} it/s",
                eta=eta,
                loss=f"loss {info['loss']:.4f}",
            )
            self.detail.plain = f"lr {info['lr']:.2e} | {tasks}{weights}"
        elif kind == "val":
            unit = " dB" if info["metric"] == "psnr" else "%"
            per = " ".join(f"{t} {v:.2f}" for t, v in info["result"].items() if t != "mean")
            self._print(
                f"step {info['step']}: validation {info['metric']} {info['result']['mean']:.2f}{unit} ({per}); "
                f"best {info['best']:.2f}{unit} at step {info['best_step']}"
            )
        elif kind == "warning":
            self._print(f"[yellow]warning:[/] {info['message']}")
        elif kind == "end":
            self.close()
            if self.as_json:
                typer.echo(jsonout.dumps(info))
                return
            unit = " dB" if info["metric"] == "psnr" else "%"
            best = (
                f", best validation {info['metric']} {info['best']:.2f}{unit} at step {info['best_step']}"
                if info["best_weights"]
                else ""
            )
            final = f", final loss {info['final_loss']:.4f}" if info["final_loss"] is not None else ""
            self.console.print(
                f"done: {info['trained_steps']} steps in {info['seconds']:.0f} s (step {info['steps']}, "
                f"epoch {info['epochs']:.2f}){final}{best}",
                soft_wrap=True,
            )
            self.console.print(
                f"weights: {info['weights']}" + (f", {info['best_weights']}" if info["best_weights"] else ""),
                soft_wrap=True,
            )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@command()
def train(
    out: Annotated[
        str, typer.Option("--out", "-o", help="Run folder: weights, training state, logs.", rich_help_panel="Run")
    ] = "runs/train",
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            help="Named recipe: moce_ir_s-aio3, moce_ir-aio3, moce_ir_s-aio5, moce_ir-aio5, custom (default).",
            rich_help_panel="Run",
        ),
    ] = None,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config-file",
            help="JSON or TOML file of config fields, laid over the preset (--print-config writes one).",
            rich_help_panel="Run",
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", metavar="", help="Print the resolved config as JSON and exit.", rich_help_panel="Run"
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            metavar="",
            help="Continue the run in --out from its last checkpoint, bit-exactly.",
            rich_help_panel="Run",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto (default), cpu, cuda, cuda:N, mps; under torchrun each process takes cuda:LOCAL_RANK.",
            rich_help_panel="Run",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch.", rich_help_panel="Run")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", metavar="", help="Print the final summary as one JSON object.", rich_help_panel="Run"),
    ] = False,
    clean_dir: Annotated[
        str | None,
        typer.Option(
            "--clean-dir", help="Folder of clean photos, degraded on the fly by --tasks.", rich_help_panel="Data"
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="Synthetic degradations for --clean-dir: noise,rain,haze,blur,defocus,lowlight,jpeg,clean (clean: identity pairs; default all).",
            rich_help_panel="Data",
        ),
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option("--data-root", help="Root folder of the benchmark datasets (presets).", rich_help_panel="Data"),
    ] = None,
    patch_size: Annotated[
        int | None, typer.Option("--patch-size", help="Training patch side in px (128).", rich_help_panel="Data")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Patches per process and step (8).", rich_help_panel="Data")
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            "--augment",
            help="dihedral (8 flips/rotations, identity included), official (7, never identity), none.",
            rich_help_panel="Data",
        ),
    ] = None,
    num_workers: Annotated[
        int | None, typer.Option("--num-workers", help="Data loader processes (2).", rich_help_panel="Data")
    ] = None,
    val_dir: Annotated[
        str | None,
        typer.Option(
            "--val-dir",
            help="Clean photos to validate on (else --val-count images per task are held out).",
            rich_help_panel="Data",
        ),
    ] = None,
    val_count: Annotated[
        int | None,
        typer.Option(
            "--val-count",
            help="Images held out per task for validation (4, at most a quarter of them; 0: no validation, no best).",
            rich_help_panel="Data",
        ),
    ] = None,
    val_size: Annotated[
        int | None,
        typer.Option(
            "--val-size", help="Centre crop of validation images in px (256; 0: whole).", rich_help_panel="Data"
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Network: moce_ir (default) or lora_ir (with --stage).", rich_help_panel="Network"),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Network config: MoCE_IR, MoCE_IR_S (default), tiny; LoRA-IR: setting1, tiny.",
            rich_help_panel="Network",
        ),
    ] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Base width.", rich_help_panel="Network")] = None,
    blocks: Annotated[
        str | None,
        typer.Option("--blocks", help="Encoder blocks per level then latent, e.g. 4,6,6,8.", rich_help_panel="Network"),
    ] = None,
    dec_blocks: Annotated[
        str | None,
        typer.Option("--dec-blocks", help="Decoder (MoCE) blocks per level, e.g. 2,4,4.", rich_help_panel="Network"),
    ] = None,
    refinement_blocks: Annotated[int | None, typer.Option("--refinement-blocks", rich_help_panel="Network")] = None,
    heads: Annotated[
        str | None, typer.Option("--heads", help="Attention heads per level, e.g. 1,2,4,8.", rich_help_panel="Network")
    ] = None,
    experts: Annotated[
        int | None, typer.Option("--experts", help="Complexity experts per MoCE layer (4).", rich_help_panel="Network")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", rich_help_panel="Network")] = None,
    complexity: Annotated[
        bool | None,
        typer.Option(
            "--complexity/--no-complexity",
            metavar="",
            help="MoCE-IR's complexity bias in the balance loss (on by default).",
            rich_help_panel="Network",
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from these weights (LoRA-IR experts: the base stage's; router: a router file's CLIP tower).",
            rich_help_panel="Network",
        ),
    ] = None,
    router: Annotated[
        str | None,
        typer.Option(
            "--router",
            help="LoRA-IR base/experts stages: the trained router checkpoint (frozen).",
            rich_help_panel="Network",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option("--loss", help="Pixel loss: l1, psnr (LoRA-IR), ce (LoRA-IR router).", rich_help_panel="Losses"),
    ] = None,
    fft_weight: Annotated[
        float | None, typer.Option("--fft-weight", help="FFT-L1 weight (presets 0.1; 0 off).", rich_help_panel="Losses")
    ] = None,
    balance_weight: Annotated[
        float | None,
        typer.Option("--balance-weight", help="Routing balance loss weight (0.01).", rich_help_panel="Losses"),
    ] = None,
    route_task_weight: Annotated[
        float | None,
        typer.Option(
            "--route-task-weight",
            help="MoCE-IR: weight of the routing supervision, a cross-entropy of each layer's gate logits (read out linearly) against the task label (0: off).",
            rich_help_panel="Losses",
        ),
    ] = None,
    reweight: Annotated[
        str | None,
        typer.Option("--reweight", help="none, or art: Art's active task reweighting.", rich_help_panel="Losses"),
    ] = None,
    art_tau: Annotated[
        float | None, typer.Option("--art-tau", help="Art temperature (0.1).", rich_help_panel="Losses")
    ] = None,
    art_ema: Annotated[
        float | None, typer.Option("--art-ema", help="Art moving-average coefficient (0.01).", rich_help_panel="Losses")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="AdamW learning rate (2e-4).", rich_help_panel="Optimisation")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", rich_help_panel="Optimisation")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimiser steps to train.", rich_help_panel="Optimisation")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Epochs to train (instead of --steps).", rich_help_panel="Optimisation"),
    ] = None,
    schedule_unit: Annotated[
        str | None,
        typer.Option(
            "--schedule-unit", help="Count warm-up and cosine in epoch or step.", rich_help_panel="Optimisation"
        ),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", help="Linear warm-up length (schedule units).", rich_help_panel="Optimisation"),
    ] = None,
    schedule_length: Annotated[
        int | None,
        typer.Option(
            "--schedule-length",
            help="Where the cosine ends (default: the end of training).",
            rich_help_panel="Optimisation",
        ),
    ] = None,
    lr_min: Annotated[float | None, typer.Option("--lr-min", rich_help_panel="Optimisation")] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option("--grad-clip", help="Clip the gradient norm (0: off).", rich_help_panel="Optimisation"),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="auto (bf16 autocast on CUDA), bf16, fp32.", rich_help_panel="Optimisation"),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            metavar="",
            help="Default: on for CUDA.",
            rich_help_panel="Optimisation",
        ),
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option("--compile", metavar="", help="torch.compile the training step.", rich_help_panel="Optimisation"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel="Optimisation")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="LoRA-IR stage: router, base, experts.", rich_help_panel="Network")
    ] = None,
    train_all: Annotated[
        bool | None,
        typer.Option(
            "--train-all",
            metavar="",
            help="LoRA-IR expert stage: train every parameter (released code), not only LoRA (paper).",
            rich_help_panel="Network",
        ),
    ] = None,
    ckpt_every: Annotated[
        int | None,
        typer.Option("--ckpt-every", help="Checkpoint every N steps (and at the end).", rich_help_panel="Run"),
    ] = None,
    val_every: Annotated[
        int | None,
        typer.Option("--val-every", help="Validate every N steps (default: at checkpoints).", rich_help_panel="Run"),
    ] = None,
    log_every: Annotated[
        int | None, typer.Option("--log-every", help="Log every N steps (10).", rich_help_panel="Run")
    ] = None,
) -> None:
    """Train an all-in-one network on a mix of degradations (one process, or many under torchrun)."""
    import os

    from .train import presets

    fields = {
        "data_root": data_root,
        "patch_size": patch_size,
        "batch_size": batch_size,
        "augment": augment,
        "num_workers": num_workers,
        "val_dir": val_dir,
        "val_count": val_count,
        "val_size": val_size,
        "arch": arch,
        "variant": config,
        "with_complexity": complexity,
        "init": init,
        "router": router,
        "pixel_loss": loss,
        "fft_weight": fft_weight,
        "balance_weight": balance_weight,
        "route_task_weight": route_task_weight,
        "reweight": reweight,
        "art_tau": art_tau,
        "art_ema": art_ema,
        "lr": lr,
        "weight_decay": weight_decay,
        "steps": steps,
        "epochs": epochs,
        "schedule_unit": schedule_unit,
        "warmup": warmup,
        "schedule_length": schedule_length,
        "lr_min": lr_min,
        "grad_clip": grad_clip,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile_model,
        "seed": seed,
        "stage": stage,
        "train_all": train_all,
        "ckpt_every": ckpt_every,
        "val_every": val_every,
        "log_every": log_every,
    }
    overrides = {k: v for k, v in fields.items() if v is not None}
    model = {
        "dim": dim,
        "num_blocks": blocks and _int_list(blocks, "--blocks"),
        "num_dec_blocks": dec_blocks and _int_list(dec_blocks, "--dec-blocks"),
        "num_refinement_blocks": refinement_blocks,
        "heads": heads and _int_list(heads, "--heads"),
        "num_experts": experts,
        "top_k": top_k,
    }
    model = {k: v for k, v in model.items() if v is not None}
    if model:
        overrides["model"] = model
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    if resume:
        cfg = presets.resume_config(
            out, overrides, preset_name=preset, config_file=config_file, clean_dir=clean_dir, tasks=task_list
        )
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


_TRUST_OPTION = typer.Option(
    "--trust-checkpoint", metavar="", help="Allow pickled objects beyond plain tensors (runs code from the file)."
)
_JSON_OPTION = typer.Option("--json", metavar="", help="Print JSON instead of text.")


def _mb(size: int | None, approx: bool = False) -> str:
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
        typer.echo(jsonout.dumps({"cache": str(weights.cache_dir()), "models": [r.to_dict() for r in rows]}))
        return
    from rich.table import Table

    colours = {"cached": "green", "imported": "green", "built-in": "green", "partial": "yellow", "missing": "dim"}
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
        list[str] | None,
        typer.Option(
            "--url", help="Download from URL instead of the manifest's; ROLE=URL for an entry with several files."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Download again even if the file is cached.")
    ] = False,
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
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bars:
        for name in names:
            tasks: dict[str, Any] = {}

            def progress(filename: str, done: int, total: int | None, name: str = name, tasks: dict = tasks) -> None:
                if filename not in tasks:
                    tasks[filename] = bars.add_task(f"{name} {filename}", total=total)
                bars.update(tasks[filename], completed=done, total=total)

            try:
                urls = weights.url_overrides(name, url) if url else None
                results += weights.fetch(
                    name,
                    urls=urls,
                    force=force,
                    progress=progress,
                    timeout=timeout,
                    retries=retries,
                    trust=trust_checkpoint,
                )
            except IrtoolError as exc:
                from rich.markup import escape

                console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
                failed += 1
    if as_json:
        typer.echo(jsonout.dumps([r.to_dict() for r in results]))
    else:
        out = _stdout()
        for r in results:
            if r.already:
                entry = weights.find_entry(r.name)
                where = "built into irtool" if entry is not None and entry.built_in else "already in the cache"
                out.print(f"{r.name} ({r.role}): {where}: {r.path}", soft_wrap=True, markup=False)
                continue
            resumed = f", resumed at {_mb(r.resumed_from)}" if r.resumed_from else ""
            out.print(
                f"{r.name} ({r.role}): {_mb(r.size)} saved to {r.path}{resumed}; sha256 {r.sha256}; {r.checked}",
                soft_wrap=True,
            )
    raise typer.Exit(1 if failed else 0)


@_weights_command("import")
def weights_import(
    path: Annotated[
        Path, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors) or a folder holding last.ckpt.")
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Manifest entry it is (checked), or a name of your own; default: from the file name."
        ),
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="Which file of a several-file entry: weights, ir or router.")
    ] = None,
    trust_checkpoint: Annotated[bool, _TRUST_OPTION] = False,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Replace a different file already stored under this name.")
    ] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
) -> None:
    """Check a checkpoint and store it in the cache as safetensors, usable as --model NAME.

    The architecture and config are read off the tensors and the file is loaded strictly; with --name of a manifest
    entry it must be that entry's network and variant (and its sha256, where the manifest has one).
    """
    from . import weights

    with _stderr().status(f"importing {path}"):
        got = weights.import_checkpoint(
            path, name=name, role=role, trust=trust_checkpoint, force=force, config=_fields(config, "--config")
        )
    if as_json:
        typer.echo(jsonout.dumps(got.to_dict()))
        return
    what = f"{got.arch} {got.variant}" if got.variant else got.arch
    verb = "was already imported as" if got.already else "imported as"
    _stdout().print(
        f"{got.source} {verb} {got.name} ({got.role}: {what}, sha256 {got.source_sha256}) -> {got.path}; "
        f"use it as --model {got.name}",
        soft_wrap=True,
    )


@_weights_command("verify")
def weights_verify(
    name: Annotated[str | None, typer.Argument(help="Entry to verify; default: everything in the cache.")] = None,
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
        typer.echo(jsonout.dumps([r.to_dict() for r in results]))
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
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite OUT if it exists.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Store floating-point tensors as fp32, fp16 (half the size) or bf16; default: as they are."
        ),
    ] = None,
    as_json: Annotated[bool, _JSON_OPTION] = False,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
) -> None:
    """Write a checkpoint as safetensors, its architecture and config in the metadata (cache untouched)."""
    from . import weights

    with _stderr().status(f"converting {path}"):
        got = weights.convert(
            path, out, trust=trust_checkpoint, force=force, dtype=dtype, config=_fields(config, "--config")
        )
    if as_json:
        typer.echo(jsonout.dumps(got.to_dict()))
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
        typer.echo(jsonout.dumps(got.to_dict()))
        return
    _stdout().print(
        f"{got.name}: removed {', '.join(str(p) for p in got.paths) or 'the local entry'} ({_mb(got.freed)} freed)",
        soft_wrap=True,
    )


@_weights_command("show")
def weights_show(
    name: Annotated[str, typer.Argument(help="Manifest name, official id or local entry.")],
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Everything about one checkpoint: source, licence, files, the paper's PSNR/SSIM, cache state."""
    from . import weights

    info = weights.describe(name)
    if as_json:
        typer.echo(jsonout.dumps(info))
        return
    from rich.table import Table

    out = _stdout()
    status = info["status"]
    network = f"{info['arch']} {info['variant']}" if info.get("variant") else info["arch"]
    out.print(
        f"[bold]{info['name']}[/] ({', '.join(info.get('aliases', [])) or 'local'}): {network}, "
        f"{info.get('setting') or 'own import'}; {status['status']}",
        soft_wrap=True,
    )
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
        out.print(
            f"file {spec['role']} ({spec['arch']}): {spec['filename']}, {size}, "
            f"sha256 {spec.get('sha256') or 'unpublished'}; from {where}; local: {here}",
            soft_wrap=True,
        )
    if info.get("reported"):
        table = Table(title="reported in the paper")
        for column in ("benchmark", "PSNR", "SSIM"):
            table.add_column(column)
        for bench, score in info["reported"].items():
            table.add_row(bench, f"{score['psnr']:.2f}", f"{score['ssim']:.3f}")
        out.print(table)
    if info.get("notes"):
        out.print(f"notes: {info['notes']}", soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# restore, degrade, calibrate (the inference engine and its companions)


class Precision(str, enum.Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class OutputFormat(str, enum.Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"
    bmp = "bmp"


class VideoCodec(str, enum.Enum):
    auto = "auto"
    h264 = "h264"
    hevc = "hevc"
    vp9 = "vp9"
    av1 = "av1"
    ffv1 = "ffv1"


class DegradationKind(str, enum.Enum):
    noise = "noise"
    rain = "rain"
    haze = "haze"
    blur = "blur"
    lowlight = "lowlight"
    jpeg = "jpeg"


_MODEL_HELP = "Manifest name of the checkpoint (see weights_manifest.json), e.g. moce_ir.aio5."
_WEIGHTS_HELP = (
    "Checkpoint file or folder (.ckpt, .pth, .safetensors). With neither --model nor --weights: the default model."
)
_DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."


def _device(device: str, gpu: int | None) -> str:
    return f"cuda:{gpu}" if gpu is not None else device


def _gpus(gpu: str | None) -> list[int] | None:
    """`--gpu N`, `--gpu 0,1,3` or `--gpu all` as a list of GPU numbers (None without --gpu)."""
    from .shard import parse_gpus

    try:
        return parse_gpus(gpu)
    except IrtoolError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--gpu") from None


def _experts_text(experts: list | None) -> str:
    """Top-1 expert of each MoCE layer as digits ("3333222211"); top-k as "3+1"."""
    if not experts:
        return "-"
    return (
        " ".join("+".join(str(e) for e in layer) for layer in experts)
        if any(len(l) > 1 for l in experts)
        else "".join(str(l[0]) for l in experts)
    )


def _degradation_text(report: Any) -> str:
    if report.degradation is None:
        return "-"
    if report.confidence is None:
        return report.degradation
    return f"{report.degradation} {report.confidence:.0%}"


def _plain(text: str, style: str = ""):
    """A table cell shown literally: file names and error texts may contain [brackets] or :colons: that rich would
    otherwise read as markup or emoji codes."""
    from rich.text import Text

    return Text(str(text), style=style)


def _closing_table(reports: list, max_rows: int = 100):
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("file", overflow="fold")  # long paths wrap rather than lose their file name
    for column, justify in (("degradation", "left"), ("experts", "left"), ("tiles", "right"), ("time", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    shown = [r for r in reports if r.status not in ("skipped", "exists")][:max_rows]
    for r in shown:
        if r.failed:
            table.add_row(_plain(r.input), "[red]failed[/]", "", "", "")
        else:
            table.add_row(
                _plain(r.input), _degradation_text(r), _experts_text(r.experts), str(r.tiles), f"{r.seconds:.2f}s"
            )
    hidden = len([r for r in reports if r.status not in ("skipped", "exists")]) - len(shown)
    return table, hidden


def _after(progress: Any, task: Any) -> Iterator[Any]:
    """Stops the image bar once the images are done, before the frame bar starts: rich shows one live display at a
    time (yields nothing)."""
    progress.update(task, visible=False)
    progress.stop()
    return
    yield


def _within(progress: Any, reports: Iterator[Any]) -> Iterator[Any]:
    """The reports, with the frame progress bar shown while they are made."""
    with progress, contextlib.closing(reports):  # type: ignore[arg-type]
        yield from reports


@command(no_args_is_help=True)
def restore(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT... OUTPUT_DIR",
            help="Image or video files, folders (recursive) or globs ('photos/**/*.jpg'), then the folder for the results (it mirrors the input folders' trees); for one input file, OUTPUT may name the output file (fixed.jpg).",
            show_default=False,
        ),
    ],
    model: Annotated[str | None, typer.Option("--model", "-m", help=_MODEL_HELP)] = None,
    weights_file: Annotated[str | None, typer.Option("--weights", "-w", help=_WEIGHTS_HELP)] = None,
    router: Annotated[str | None, typer.Option("--router", help="LoRA-IR router checkpoint (its second file).")] = None,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
    router_config: Annotated[list[str] | None, _ROUTER_CONFIG_OPTION] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration", help="Routing calibration file (default: <weights>.calibration.json, if present)."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", "-d", help=_DEVICE_HELP)] = "auto",
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            "-g",
            help="N: same as --device cuda:N. 0,1,3 or all: one worker process per GPU (with --device cpu: that many CPU processes).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Precision, typer.Option("--precision", help="auto: bf16 autocast on CUDA GPUs that have it, else fp32.")
    ] = Precision.auto,
    tile: Annotated[
        int,
        typer.Option(
            "--tile",
            "-t",
            help="Largest tile side in px: as few tiles as keep --tile-overlap, laid out evenly, so they may come out smaller than this (0: whole images; tiles are used anyway for images too large for memory, and after running out of GPU memory).",
        ),
    ] = 0,
    tile_overlap: Annotated[
        int,
        typer.Option(
            "--tile-overlap", help="Overlap between tiles in px (blended, no seams; at most a quarter of the tile)."
        ),
    ] = 32,
    route_per_tile: Annotated[
        bool,
        typer.Option(
            "--route-per-tile",
            metavar="",
            help="Let each tile pick its own experts instead of sharing the whole image's routing.",
        ),
    ] = False,
    route_size: Annotated[
        int,
        typer.Option(
            "--route-size", help="Longer side (px) of the downscaled copy a tiled image is routed on; 0: full size."
        ),
    ] = 512,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Same-size images (and tiles) per forward pass.")
    ] = 1,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format (auto: the input's).")
    ] = OutputFormat.auto,
    suffix: Annotated[
        str, typer.Option("--suffix", help="Appended to output names: photo.jpg -> photo<SUFFIX>.jpg.")
    ] = "",
    quality: Annotated[int, typer.Option("--quality", help="JPEG/WebP quality.")] = 95,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", metavar="", help="Skip inputs whose output exists.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", metavar="", help="Replace existing outputs (never inputs).")
    ] = False,
    max_megapixels: Annotated[
        float | None,
        typer.Option(
            "--max-megapixels",
            help="Refuse images larger than this (default: what half of the available memory holds in the tiled path).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads decoding and encoding around the model.")] = 2,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            metavar="",
            help="Allow pickled objects beyond plain tensors (runs code from the file).",
        ),
    ] = False,
    video_codec: Annotated[
        VideoCodec,
        typer.Option(
            "--video-codec",
            help="Videos: output codec (auto: the input's when irtool can write it, else h264). A container that cannot hold it becomes .mkv.",
        ),
    ] = VideoCodec.auto,
    crf: Annotated[
        int | None,
        typer.Option("--crf", help="Videos: quality, lower is better (default h264 18, hevc 20, vp9 31, av1 30)."),
    ] = None,
    lossless: Annotated[
        bool,
        typer.Option(
            "--lossless", metavar="", help="Videos: FFV1 in RGB (.mkv): the restored pixels exactly, for research."
        ),
    ] = False,
    route_per_frame: Annotated[
        bool,
        typer.Option(
            "--route-per-frame",
            metavar="",
            help="Videos: let every frame pick its experts (can flicker) instead of one routing per shot.",
        ),
    ] = False,
    cut_threshold: Annotated[
        float,
        typer.Option(
            "--cut-threshold", help="Videos: colour-histogram distance (0..1) between frames that counts as a cut."
        ),
    ] = 0.35,
    start: Annotated[
        str | None, typer.Option("--start", help="Videos: restore from this time (seconds or [hh:]mm:ss).")
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="Videos: restore up to this time.")] = None,
    keep_partial: Annotated[
        bool,
        typer.Option(
            "--keep-partial",
            metavar="",
            help="Videos: on Ctrl-C keep a playable <name>.partial<ext> of the frames done.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            metavar="",
            help="List what would be written (and each video's streams and frames), then stop (loads no model).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="One JSON object per image on stdout instead of the table.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar, no table.")] = False,
    report_html: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write a self-contained HTML report (before/after, routing, failures) to FILE (needs irtool[report]).",
        ),
    ] = None,
) -> None:
    """Restore images: noise, rain, haze, blur, low light (whatever the model was trained on) are removed.

    Reports what the router saw in each image: experts per layer, and a degradation name once the checkpoint is calibrated with `irtool calibrate`. Exit status 1 if any image failed.
    """
    from .jobs import EXISTS_HINT, RestoreOptions, plan, split_restore_paths
    from .shard import world_size

    inputs, out_dir = split_restore_paths(paths)
    gpus = _gpus(gpu)
    options = RestoreOptions(
        model=model,
        weights=weights_file,
        router=router,
        config=_fields(config, "--config"),
        router_config=_fields(router_config, "--router-config"),
        calibration=calibration,
        trust=trust_checkpoint,
        device=_device(device, gpus[0] if gpus and len(gpus) == 1 and device != "cpu" else None),
        precision=precision.value,
        tile=tile,
        tile_overlap=tile_overlap,
        route_per_tile=route_per_tile,
        route_size=route_size,
        batch_size=batch_size,
        format=None if fmt == OutputFormat.auto else fmt.value,
        suffix=suffix,
        quality=quality,
        overwrite=overwrite,
        skip_existing=skip_existing,
        max_megapixels=max_megapixels,
        workers=workers,
    )
    options.check()
    from . import video

    video_options = video.VideoOptions(
        codec=None if video_codec == VideoCodec.auto else video_codec.value,
        crf=crf,
        lossless=lossless,
        route_per_frame=route_per_frame,
        cut_threshold=cut_threshold,
        start=video.parse_time(start, "--start"),
        end=video.parse_time(end, "--end"),
        keep_partial=keep_partial,
    )
    video_options.check()
    if gpus and len(gpus) > 1 and world_size() == 1 and not dry_run:
        from .distributed_run import launch

        raise typer.Exit(launch("restore", gpus, device, ("--device", "-d")))
    if report_html and not dry_run:
        from .report import check_available

        check_available()  # before any work: a missing Jinja2 is one line naming the extra
    ranked = None
    if world_size() > 1:  # under torchrun: this rank's share of one run (see irtool.distributed_run)
        from .distributed_run import RankedRestore

        ranked = RankedRestore.start(inputs, out_dir, options)
        jobs, options = ranked.jobs, ranked.options
        if not ranked.is_main:
            try:
                raise typer.Exit(0 if dry_run else ranked.work())
            finally:
                ranked.close()
    else:
        jobs = plan(inputs, out_dir, options)
    if any(video.is_video(job.src) for job in jobs):
        jobs = video.retarget(jobs, video_options, overwrite=overwrite, skip_existing=skip_existing)
    err = _stderr()
    if dry_run:
        any_error = False
        for job in jobs:
            action = "error" if job.error else "exists" if job.exists else "skip" if job.skip else "write"
            streams = video.dry_run_streams(job) if action == "write" and video.is_video(job.src) else None
            if isinstance(streams, str):
                action, job = "error", replace(job, error=streams)
                streams = None
            if as_json:
                line = {
                    "input": str(job.src or job.source),
                    "output": str(job.dst) if job.dst else None,
                    "action": action,
                    "reason": job.error or job.skip,
                }
                if streams is not None:
                    line["streams"] = [s.to_json() for s in streams]
                typer.echo(jsonout.dumps(line))
            else:
                typer.echo(
                    f"{action:5}  {job.src or job.source}"
                    + (f" -> {job.dst}" if job.dst and not job.error else "")
                    + (f"  ({job.error or job.skip})" if job.error or job.skip else "")
                )
                for info in streams or []:
                    typer.echo(f"         #{info.index} {info.kind}: {info.text}")
            any_error = any_error or action == "error"
        raise typer.Exit(1 if any_error else 0)
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .jobs import report_unrunnable

    video_jobs = [job for job in jobs if video.is_video(job.src)]
    jobs = [job for job in jobs if not video.is_video(job.src)]
    restorer = None
    reports = []
    megapixels = 0.0

    def tick(report: Any) -> None:  # one image done, on any rank
        nonlocal megapixels
        megapixels += report.megapixels
        elapsed = time.perf_counter() - started
        progress.update(task, advance=1, rate=f"{megapixels / elapsed:.2f} MP/s" if elapsed > 0 else "")

    restorer = None
    if ranked is not None:
        restorer = ranked.load()
        for note in restorer.notes if restorer else []:
            err.print(f"[yellow]note:[/] {note}", soft_wrap=True)
        stream = ranked.reports(restorer, arrived=tick)
    elif any(not (job.error or job.skip) for job in jobs + video_jobs):
        from .engine import Restorer, restore_files

        restorer = Restorer.load(options)
        for note in restorer.notes:
            err.print(f"[yellow]note:[/] {note}", soft_wrap=True)
        stream = restore_files(jobs, restorer)
    else:  # nothing to run: no model to load
        stream = (report_unrunnable(job) for job in jobs)
    started = time.perf_counter()
    progress = Progress(
        TextColumn("restoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )
    frames = Progress(
        *video.video_progress_columns(), console=err, transient=True, disable=quiet or not err.is_terminal
    )
    videos = video.restore_videos(video_jobs, restorer, video_options, frames)  # a generator, empty without videos
    # closing(): on Ctrl-C the engine cancels queued work at once; writes already started finish atomically
    with progress, contextlib.closing(stream):  # type: ignore[arg-type]
        task = progress.add_task("restore", total=len(jobs), rate="", visible=bool(jobs))
        for report in itertools.chain(stream, _after(progress, task), _within(frames, videos)):
            reports.append(report)
            if report.failed:
                progress.console.print(f"[bold red]error:[/] {report.error}", soft_wrap=True, highlight=False)
            for warning in report.warnings if report.ok else []:
                progress.console.print(
                    f"[yellow]warning:[/] {report.input}: {warning}", soft_wrap=True, highlight=False
                )
            if as_json:
                typer.echo(jsonout.dumps(report.to_json()))
            if isinstance(report, video.VideoReport):
                continue
            if ranked is None:
                tick(report)
    if ranked is not None:
        ranked.close()
    elapsed = time.perf_counter() - started
    done = sum(r.ok for r in reports)
    failed = sum(r.failed for r in reports)
    skipped = sum(r.status == "skipped" for r in reports)
    existing = sum(r.status == "exists" for r in reports)
    if not as_json and not quiet:
        from rich.console import Console

        table, hidden = _closing_table(reports)
        if table.row_count:
            Console(highlight=False).print(table)
        if hidden:
            typer.echo(f"... and {hidden} more (use --json for every image)")
        for report in reports:
            if isinstance(report, video.VideoReport) and report.ok:
                Console(highlight=False).print(video.shots_table(report))
    kind = "images" if not video_jobs else "videos" if not jobs else "inputs"
    summary = f"restored {done} of {len(reports)} {kind} in {elapsed:.1f}s" + (
        f" ({megapixels / max(elapsed, 1e-9):.2f} MP/s)" if jobs else ""
    )
    extras = [f"{failed} failed" if failed else "", f"{skipped} skipped" if skipped else ""]
    extras += [f"{existing} left as they were (their outputs exist; {EXISTS_HINT})" if existing else ""]
    extras = [e for e in extras if e]
    if not quiet or failed or existing:
        err.print(summary + (f"; {', '.join(extras)}" if extras else ""), highlight=False, soft_wrap=True)
    if report_html:
        from .report import write_restore_report

        err.print(
            f"report: {write_restore_report(report_html, reports, restorer=restorer, seconds=elapsed, workers=workers)}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(ranked.exit_code(bool(failed)) if ranked is not None else 1 if failed else 0)


@command(no_args_is_help=True)
def degrade(
    source: Annotated[str, typer.Argument(metavar="IN", help="Clean image file, folder or glob.", show_default=False)],
    destination: Annotated[
        str, typer.Argument(metavar="OUT", help="Output file (for one input file) or folder.", show_default=False)
    ],
    kind: Annotated[DegradationKind, typer.Option("--kind", "-k", help="Which degradation.")] = DegradationKind.noise,
    level: Annotated[
        str,
        typer.Option(
            "--level",
            "-l",
            help="light, medium, heavy, or a number (noise: sigma on 0-255; rain: streaks per 1000 px; haze: beta; blur: length px; lowlight: exposure; jpeg: quality).",
        ),
    ] = "medium",
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace existing outputs.")] = False,
) -> None:
    """Make test images: add seeded synthetic noise, rain, haze, blur, low light or JPEG artefacts."""
    from dataclasses import replace

    from .degrade import degrade as apply
    from .degrade import resolve_level
    from .images import files as io
    from .jobs import expand_inputs

    try:
        resolve_level(kind.value, level)
    except ValueError as exc:
        fail(f"--level {level}: {exc}", code=2)
    found, failed = expand_inputs([source], Path(destination).resolve())
    err = _stderr()
    for job in failed:
        err.print(f"[bold red]error:[/] {job.error}", soft_wrap=True)
    single_file = Path(source).is_file() and Path(destination).suffix.lower() in io.IMAGE_SUFFIXES
    bad = len(failed)
    for n, (_, src, rel) in enumerate(found):
        dst = Path(destination) if single_file else Path(destination) / rel / src.name
        try:
            image = io.read_image(src)
            color = io.to_array(replace(image, alpha=None))  # the file's own dtype; alpha stays as it is
            degraded = io.from_array(apply(color, kind.value, level, seed=seed + n))
            result = replace(image, pixels=degraded.pixels, _rgb=None)
            io.write_image(dst, result, overwrite=overwrite)
        except IrtoolError as exc:
            err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            bad += 1
            continue
        typer.echo(f"{dst}")
    raise typer.Exit(1 if bad else 0)


@command()
def calibrate(
    model: Annotated[str | None, typer.Option("--model", "-m", help=_MODEL_HELP)] = None,
    weights_file: Annotated[str | None, typer.Option("--weights", "-w", help=_WEIGHTS_HELP)] = None,
    clean_dir: Annotated[
        str | None,
        typer.Option(
            "--clean-dir", help="Folder of clean photos (default: scikit-image's CC0 sample photos, if installed)."
        ),
    ] = None,
    classes: Annotated[
        str, typer.Option("--classes", help="Comma-separated degradations to tell apart ('clean' = none).")
    ] = ",".join(("clean", "noise", "rain", "haze", "blur", "defocus", "lowlight", "jpeg")),
    levels: Annotated[
        str, typer.Option("--levels", help="Comma-separated levels of each degradation.")
    ] = "light,medium,heavy",
    size: Annotated[int, typer.Option("--size", help="Side of the square crops routed (px).")] = 256,
    crops: Annotated[int, typer.Option("--crops", help="Crops per photo.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of crops and degradations.")] = 0,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Calibration file (default: <weights>.calibration.json beside the weights)."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", "-d", help=_DEVICE_HELP)] = "auto",
    gpu: Annotated[int | None, typer.Option("--gpu", "-g", help="Same as --device cuda:N.")] = None,
    precision: Annotated[Precision, typer.Option("--precision", help="As for restore.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Crops per forward pass.")] = 4,
    min_accuracy: Annotated[
        float,
        typer.Option(
            "--min-accuracy",
            help="Classes named right less often than this on held-out photos are reported as 'unknown' (0-1).",
        ),
    ] = 0.7,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            metavar="",
            help="Allow pickled objects beyond plain tensors (runs code from the file).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the calibration summary as JSON.")] = False,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
) -> None:
    """Teach irtool to name degradations from a MoCE-IR checkpoint's routing.

    Degrades clean photos with known synthetic degradations, records the routing each gets, and stores a nearest-centroid classifier beside the weights; `irtool restore` then names each image's degradation with a confidence. Accuracy is measured on photos left out of the fit.
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .calibrate import Calibration, calibration_path, clean_photos, fingerprint
    from .calibrate import calibrate as run_calibration
    from .degrade import LEVEL_NAMES
    from .engine import Restorer
    from .images import files as io
    from .jobs import RestoreOptions

    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    level_list = [lv.strip() for lv in levels.split(",") if lv.strip()]
    for lv in level_list:
        if lv not in LEVEL_NAMES:
            fail(f"--levels {levels}: use names from {', '.join(LEVEL_NAMES)}", code=2)
    if size < 16 or crops < 1:
        fail("--size must be at least 16 and --crops at least 1", code=2)
    if not 0.0 <= min_accuracy <= 1.0:
        fail(f"--min-accuracy {min_accuracy}: a fraction between 0 and 1", code=2)
    options = RestoreOptions(
        model=model,
        weights=weights_file,
        device=_device(device, gpu),
        precision=precision.value,
        trust=trust_checkpoint,
        config=_fields(config, "--config"),
    )
    photos_paths = clean_photos(clean_dir)
    restorer = Restorer.load(options)
    if getattr(restorer.model, "classify", None) is not None:
        fail("this model names degradations itself (it has a degradation classifier); no calibration needed")
    err = _stderr()
    for note in restorer.notes:
        if "calibration" not in note:
            err.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    target = Path(output) if output else (calibration_path(restorer.weights_path) if restorer.weights_path else None)
    if target is None:
        fail("no weights file to put the calibration beside; pass --output FILE")
    photos = []
    for path in photos_paths:
        try:
            photos.append(np.rint(io.read_image(path).rgb * 255).astype(np.uint8))  # RGB, gray repeated
        except IrtoolError as exc:
            err.print(f"[yellow]warning:[/] {exc}; skipped", soft_wrap=True)
    progress = Progress(
        TextColumn("calibrating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("crops"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task("calibrate", total=None)
        result: Calibration = run_calibration(
            restorer.route,
            photos,
            fingerprint=fingerprint(restorer.model),
            classes=wanted,
            levels=level_list,
            size=size,
            crops=crops,
            seed=seed,
            batch_size=batch_size,
            device=restorer.device,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            info={
                "weights": str(restorer.weights_path) if restorer.weights_path else None,
                "clean": [str(p) for p in photos_paths],
            },
            min_accuracy=min_accuracy,
        )
    try:
        result.save(target)
    except IrtoolError as exc:
        fail(f"{exc} (pass --output FILE to save the calibration elsewhere)")
    summary = {
        "calibration": str(target),
        "accuracy": result.accuracy,
        "per_class_accuracy": result.per_class_accuracy,
        "unknown_below": min_accuracy,
        "reported_as_unknown": result.unreliable,
        "classes": result.classes,
        "confusion": result.confusion,
        "samples": result.info.get("samples"),
        "photos": result.info.get("photos"),
        "seconds": result.info.get("seconds"),
    }
    if as_json:
        typer.echo(jsonout.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"held-out accuracy {result.accuracy:.0%} over {summary['photos']} photos (leave one photo out)",
        box=None,
        header_style="bold",
    )
    table.add_column("true \\ named")
    for name in result.classes:
        table.add_column(name, justify="right")
    table.add_column("accuracy", justify="right")
    for name, row in zip(result.classes, result.confusion):
        table.add_row(name, *[str(v) for v in row], f"{result.per_class_accuracy.get(name, 0):.0%}")
    Console(highlight=False).print(table)
    if result.unreliable:
        typer.echo(f"named below {min_accuracy:.0%}, so reported as 'unknown': {', '.join(result.unreliable)}")
    typer.echo(f"saved {target}")


# --------------------------------------------------------------------------------------------------------------------
# eval and datasets (benchmarks with the published protocols)

_PROTOCOL_NAMES = ("moce", "promptir", "y", "lorair")


@command("eval")
def eval_command(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            "-d",
            help="Benchmark (repeatable): rain100l, cbsd68-25, cbsd68 (=15,25,50), cdd11, "
            "synthetic:noise25, ... See `irtool datasets list`.",
        ),
    ] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--setting", help="A paper's benchmark set: aio3, aio5, cdd11, allweather.")
    ] = None,
    model_name: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name from the manifest (in the cache); repeat to compare models."),
    ] = None,
    weights: Annotated[
        list[str] | None, typer.Option("--weights", "-w", help="Checkpoint file or folder; repeat to compare models.")
    ] = None,
    router: Annotated[
        Path | None,
        typer.Option(
            "--router", help="LoRA-IR: the router checkpoint, when --weights is the restoration network alone."
        ),
    ] = None,
    config: Annotated[list[str] | None, _CONFIG_OPTION] = None,
    router_config: Annotated[list[str] | None, _ROUTER_CONFIG_OPTION] = None,
    reported: Annotated[
        str | None, typer.Option("--reported", help="Compare with this manifest entry's published figures.")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol", help=f"Metric protocol ({', '.join(_PROTOCOL_NAMES)}); default: each dataset's own."
        ),
    ] = None,
    crop_border: Annotated[
        int, typer.Option("--crop-border", min=0, help="Border (px) dropped before Y-protocol metrics.")
    ] = 0,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Datasets folder (default: $IRTOOL_DATA, else the user data dir)."),
    ] = None,
    clean_dir: Annotated[Path | None, typer.Option("--clean-dir", help="Clean photos for synthetic: datasets.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            "-g",
            help="N: same as --device cuda:N. 0,1,3 or all: one worker process per GPU, each scoring a share of every dataset (with --device cpu: that many CPU processes).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32 (the papers'), bf16 or fp16 autocast.")] = "fp32",
    tile: Annotated[
        int,
        typer.Option(
            "--tile", min=0, help="Tile size in px for large images (departs from the protocol); 0 = whole image."
        ),
    ] = 0,
    routing_noise: Annotated[
        bool,
        typer.Option(
            "--routing-noise", metavar="", help="MoCE-IR: add the official test's router-logit noise (torch seed 0)."
        ),
    ] = False,
    noise_stream: Annotated[
        str,
        typer.Option(
            "--noise-stream",
            help="shared: one seed-0 noise stream for all noise sets, in order (the "
            "official 15->25->50 run); fresh: reseed for each (as if run alone).",
        ),
    ] = "shared",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N images of each dataset (quick look).")
    ] = None,
    save_images: Annotated[
        Path | None, typer.Option("--save-images", help="Write restored images to DIR/<dataset>/ (see --save-format).")
    ] = None,
    save_format: Annotated[
        str,
        typer.Option(
            "--save-format",
            help="png8: 8-bit PNG (to look at); png16: 16-bit PNG; tiff: float32 TIFF, the exact output the scores were computed on.",
        ),
    ] = "png8",
    save_inputs: Annotated[
        Path | None,
        typer.Option("--save-inputs", help="Write the inputs as fed (e.g. the noisy images) to DIR/<dataset>/."),
    ] = None,
    json_path: Annotated[
        str | None, typer.Option("--json", help="Write the full report (per image) as JSON to FILE ('-' = stdout).")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write per-image scores as CSV to FILE.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of expert usage per layer (needs matplotlib).")
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            metavar="",
            help="Allow pickled objects beyond plain tensors (runs code from the file).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    report_html: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write a self-contained HTML report (scores beside the paper's, per-image table, worst/best images, crops side by side) to FILE (needs irtool[report]).",
        ),
    ] = None,
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure",
            help="With --report: save the crop NAME:x,y,w,h (NAME: file or DATASET/FILE) from every model side by side as a PNG beside the report.",
        ),
    ] = None,
) -> None:
    """Score a model on benchmark datasets with the published protocols, next to the paper's figures.

    With several --model/--weights, each is scored in turn; --json then holds a list of reports, --csv gains a model column, --save-images writes DIR/<model>/<dataset>/.
    """
    from .evaluation import datasets as ds

    if not dataset and not setting:
        fail("name a benchmark with --dataset NAME or --setting aio3 (see `irtool datasets list`)", 2)
    sources: list[tuple[str | None, bool]] = [(m, True) for m in model_name or []] + [(w, False) for w in weights or []]
    several = len(sources) > 1
    if figure and not report_html:
        fail("--figure needs --report FILE (the figure is saved beside the report)", 2)
    if protocol is not None and protocol not in _PROTOCOL_NAMES:
        fail(f"--protocol {protocol}: one of {', '.join(_PROTOCOL_NAMES)}", 2)
    names = ds.expand(dataset or [], setting or [])

    from . import weights as manifest
    from .evaluation import evaluate
    from .loading import load_model
    from .shard import world_size

    figures = []
    if report_html:
        from .report import check_available
        from .report.evaluation import Gallery, parse_figure

        check_available()
        figures = [parse_figure(text) for text in figure or []]
    gpus = _gpus(gpu)
    if several and (world_size() > 1 or (gpus and len(gpus) > 1)):
        fail(
            "several models are compared in one process: drop the GPU list (or merge report JSONs with `irtool report`)",
            2,
        )
    if gpus and len(gpus) > 1 and world_size() == 1:
        from .distributed_run import launch

        raise typer.Exit(launch("eval", gpus, device))
    if gpus and device != "cpu":
        device = f"cuda:{gpus[0]}"
    ranked = None
    if world_size() > 1:  # under torchrun: this rank scores a share of every dataset (see irtool.distributed_run)
        from .distributed_run import RankedEval

        ranked = RankedEval.start(names, data_root, clean_dir, device, limit, routing_noise)
        targets, device = ranked.targets, ranked.device
    else:
        targets = evaluate.resolve(names, data_root, clean_dir)  # every dataset found before the model loads
    if reported and manifest.find_entry(reported) is None:
        fail(f"--reported {reported}: not a manifest entry (see weights_manifest.json)")
    labels: list[str] = []
    for name, _ in sources:
        base = Path(name).name or name if name else "default"
        labels.append(base if base not in labels else f"{base}-{len(labels) + 1}")
    reports: list = []
    galleries: list = []
    wanted: dict = {}
    interrupted = False
    for n, ((name, is_model), label) in enumerate(zip(sources or [(None, False)], labels or ["default"])):
        entry_name = reported or (name if is_model else None)
        entry = manifest.find_entry(entry_name) if entry_name else None
        source = name
        if source is None:  # as `irtool restore` does: the default model
            from .loading import default_source

            source, default_router, how = default_source()
            router = router or default_router
            if ranked is None or ranked.is_main:
                _stderr().print(f"[yellow]note:[/] using {how}", soft_wrap=True, highlight=False)
            default_name = manifest.load_manifest().get("default")
            if entry is None and isinstance(default_name, str) and default_name:
                entry = manifest.find_entry(default_name)

        def load(source: Any = source, router: Any = router) -> Any:
            return load_model(
                source,
                device=device,
                router=router,
                trust=trust_checkpoint,
                config=_fields(config, "--config"),
                router_config=_fields(router_config, "--router-config"),
            )

        slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)
        options = evaluate.EvalOptions(
            protocol=protocol,
            crop_border=crop_border,
            precision=precision,
            tile=tile,
            routing_noise=routing_noise,
            noise_stream=noise_stream,
            limit=limit,
            save_images=save_images / slug if save_images and several else save_images,
            save_format=save_format,
            save_inputs=save_inputs,
        )

        def new_report(model: Any, source: Any = source, entry: Any = entry, options: Any = options) -> Any:
            return evaluate.new_report(
                model,
                options,
                source=str(source),
                device=next(model.parameters()).device,
                reported_from=entry.name if entry else None,
                reported=evaluate.reported_figures(entry.data if entry else None),
            )

        if ranked is not None and not ranked.is_main:
            try:
                raise typer.Exit(ranked.work(load, options, new_report))
            finally:
                ranked.close()
        model = load()
        report = new_report(model)
        reports.append(report)
        # the HTML report keeps a few images as they pass (a multi-process run shows scores without pictures)
        gallery = Gallery(wanted=dict(wanted), figures=figures) if report_html and ranked is None else None
        galleries.append(gallery)
        try:
            run = (
                ranked.run if ranked is not None else functools.partial(evaluate.run, targets=targets, observer=gallery)
            )
            _run_eval_with_progress(run, targets, model, options, report, quiet=quiet or json_path == "-")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # finished images are never lost: the report files are written even after Ctrl-C (marked incomplete)
            if several:
                evaluate.write_many(reports, labels[: len(reports)], json_path if json_path != "-" else None, csv_path)
            else:
                if json_path and json_path != "-":
                    evaluate.write_json(report, json_path)
                if csv_path:
                    evaluate.write_csv(report, csv_path)
        if interrupted:
            break
        if gallery is not None and n == 0:
            wanted = gallery.selection()  # the images every later model shows beside this one
        del model
    if ranked is not None:
        ranked.close()
    if report_html:
        from .report.evaluation import write_report

        page, pngs = write_report(report_html, [r.to_dict() for r in reports], galleries)
        for path in [page, *pngs]:
            _stderr().print(f"{'report' if path == page else 'figure'}: {path}", soft_wrap=True, highlight=False)
    if interrupted:
        _stderr().print("interrupted; the report holds the images finished so far")
        raise typer.Exit(130)
    if plot:
        for report, label in zip(reports, labels or ["default"]):
            slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)
            evaluate.plot_usage(report, plot.with_name(f"{plot.stem}.{slug}{plot.suffix}") if several else plot)
    if json_path == "-":
        typer.echo(evaluate.to_json_many(reports) if several else evaluate.to_json(reports[0]))
    else:
        for report in reports:
            _render_eval(report)
    failures = [r.error for report in reports for d in report.datasets for r in d.images if r.error]
    for message in failures[:20]:
        _stderr().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if len(failures) > 20:
        _stderr().print(f"... and {len(failures) - 20} more failed images (see --json/--csv)")
    raise typer.Exit(ranked.exit_code(bool(failures)) if ranked is not None else 1 if failures else 0)


def _run_eval_with_progress(
    run: Callable, targets: list, model: Any, options: Any, report: Any, *, quiet: bool
) -> None:
    """`run(model, options=, report=)` yields (dataset progress, image result) per image: evaluate.run, or a
    multi-process run's rank 0."""
    if quiet:
        for _ in run(model, options=options, report=report):
            pass
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[score]}"),
    )
    with Progress(*columns, console=_stderr(), transient=False) as progress:
        tasks: dict[str, Any] = {}
        for located in targets:
            n = len(located.pairs) + (0 if options.limit else len(located.probe.unpaired_inputs))
            tasks[located.spec.name] = progress.add_task(located.spec.name, total=min(n, options.limit or n), score="")
        for dreport, _ in run(model, options=options, report=report):
            psnr = dreport.psnr
            score = f"{psnr:.2f} dB" if psnr is not None else ""
            progress.update(tasks[dreport.dataset], advance=1, score=score)


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    if value == float("inf"):
        return "inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _wide_console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or redirected: no need to squeeze tables into 80 columns
        console = Console(highlight=False, width=140)
    return console


def _fmt_pair(psnr: float | None, ssim: float | None) -> str:
    """ "PSNR/SSIM" of the degraded inputs (the baseline column of eval tables)."""
    return "–" if psnr is None or ssim is None else f"{_fmt(psnr, 2)}/{_fmt(ssim, 3)}"


def _render_eval(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _wide_console()
    model = report.model
    title = f"{Path(model['source']).name} ({model['arch']}, {model['parameters'] / 1e6:.2f}M params) on {report.device}, {report.precision}"
    table = Table(title=title, title_justify="left")
    for column, justify in (("dataset", "left"), ("protocol", "left"), ("images", "right"), ("input", "right"),
                            ("PSNR", "right"), ("SSIM", "right"), ("paper", "right"), ("ΔPSNR", "right"),
                            ("ΔSSIM", "right"), ("s/img", "right")):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_column("worst image", overflow="ellipsis", no_wrap=True)
    for d in report.datasets:
        s = d.summary()
        paper = f"{d.reported['psnr']:.2f}/{d.reported['ssim']:.3f}" if d.reported else "–"
        worst = d.worst
        images = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        delta = s["delta_psnr"]
        delta_text = _fmt(delta, 2, signed=True)
        if delta is not None:
            delta_text = f"[{'green' if delta >= -0.005 else 'red'}]{delta_text}[/]"
        table.add_row(
            _plain(d.dataset), d.protocol, images, _fmt_pair(s["input_psnr"], s["input_ssim"]), _fmt(s["psnr"], 2),
            _fmt(s["ssim"], 4), paper, delta_text,
            _fmt(s["delta_ssim"], 4, signed=True), _fmt(s["seconds_per_image"], 3),
            _plain(f"{worst.file} {worst.psnr:.2f}") if worst else "–",
        )  # fmt: skip
    avg = report.average
    if avg:
        ref = avg.get("reported")
        table.add_section()
        table.add_row(
            "average", "", str(len(avg["datasets"])) + " sets", _fmt_pair(avg.get("input_psnr"), avg.get("input_ssim")),
            _fmt(avg["psnr"], 2), _fmt(avg["ssim"], 4),
            f"{ref['psnr']:.2f}/{ref['ssim']:.3f}" if ref else "–", _fmt(avg.get("delta_psnr"), 2, signed=True),
            _fmt(avg.get("delta_ssim"), 4, signed=True), "", "",
        )  # fmt: skip
    console.print(table)
    _render_usage(console, report)
    notes = []
    if report.reported_from:
        notes.append(f"paper figures: manifest entry {report.reported_from}")
    seen_protocols: set[str] = set()
    for d in report.datasets:
        if d.protocol not in seen_protocols:
            seen_protocols.add(d.protocol)
            notes.append(f"protocol {d.protocol}: {d.reproduces}")
        if d.noise:
            follows = ", ".join(d.noise["follows"]) or "nothing (as if run alone)"
            notes.append(f"{d.dataset}: AWGN σ{d.noise['sigma']}, seed 0 {d.noise['stream']} stream, after {follows}")
        if d.synthetic:
            notes.append(f"{d.dataset}: {d.synthetic['photos']} ({d.synthetic['kind']} {d.synthetic['level']:g}, "
                         "seeded per image); no published figure")  # fmt: skip
        notes.extend(f"{d.dataset}: departs from the protocol: {x}" for x in d.departures)
        notes.extend(f"{d.dataset}: {w}" for w in d.warnings)
    if report.options.get("routing_noise"):
        notes.append("router-logit noise on (official MoCE-IR test behaviour, torch seed 0)")
    if report.saved_images:
        notes.append(f"restored images in {report.saved_images['folder']} as {report.saved_images['keeps']}")
    for note in notes:
        console.print(f"[dim]·[/] {escape(note)}", soft_wrap=True)


def _render_usage(console: Any, report: Any) -> None:
    from rich.table import Table

    expert_sets = [d for d in report.datasets if d.usage and d.usage["kind"] == "experts"]
    if expert_sets:
        layers = len(expert_sets[0].usage["counts"])
        table = Table(title="Router: most chosen expert per MoCE layer (share of images)", title_justify="left")
        table.add_column("dataset")
        for i in range(layers):
            table.add_column(f"L{i}", justify="right")
        for d in expert_sets:
            cells = []
            for row in d.usage["counts"]:
                total = sum(row) or 1
                best = max(range(len(row)), key=lambda e: row[e])
                cells.append(f"e{best} {100 * row[best] / total:.0f}%")
            table.add_row(d.dataset, *cells)
        console.print(table)
    class_sets = [d for d in report.datasets if d.usage and d.usage["kind"] == "classes"]
    if class_sets:
        table = Table(title="Router: degradation class per image", title_justify="left")
        table.add_column("dataset")
        table.add_column("classes")
        for d in class_sets:
            table.add_row(d.dataset, ", ".join(f"{k} {v}" for k, v in d.usage["counts"].items()))
        console.print(table)


@command("report", no_args_is_help=True)
def report_command(
    reports: Annotated[
        list[Path],
        typer.Argument(
            metavar="REPORT.json...",
            help="Eval reports (`irtool eval --json FILE`), one model each or a list.",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")] = Path("report.html"),
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure", help="Save the crop NAME:x,y,w,h from every model side by side as a PNG beside the page."
        ),
    ] = None,
) -> None:
    """Merge eval report JSONs into one HTML page: every model's scores side by side, per dataset and per image.

    Runs made with --save-images (and --save-inputs for noise synthesised at test time) also bring their pictures: worst and best images, and the same crops from every model.
    """
    from .report import check_available
    from .report.evaluation import load_reports, merge, parse_figure, write_report

    check_available()
    figures = [parse_figure(text) for text in figure or []]
    loaded = load_reports(reports)
    page, pngs = write_report(output, loaded, merge(loaded, figures))
    for path in [page, *pngs]:
        typer.echo(str(path))


datasets_app = typer.Typer(
    help="Benchmark datasets: where irtool looks for them and what is missing.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")


_DataRoot = Annotated[
    Path | None, typer.Option("--data-root", help="Datasets folder (default: $IRTOOL_DATA, else the user data dir).")
]


@command("list", typer_app=datasets_app)
def datasets_list(
    data_root: _DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="One JSON object instead of a table.")] = False,
) -> None:
    """Every benchmark irtool knows: found or missing under the data root, with counts."""
    from .evaluation import datasets as ds

    root = ds.data_root(data_root)
    rows = []
    for spec in ds.DATASETS.values():
        if spec.split != "test":
            continue
        report = ds.check(spec, root)
        found = report.located
        if found is None:
            status = "incomplete" if any(p.present for p in report.probes) else "missing"
        else:
            status = "found" if not found.warnings else "found*"
        rows.append({
            "name": spec.name, "title": spec.title, "task": spec.task, "protocol": spec.protocol, "status": status,
            "count": len(found.pairs) if found else 0, "expected": spec.expected,
            "layout": found.layout.name if found else None, "summary": report.summary,
        })  # fmt: skip
    if as_json:
        typer.echo(
            jsonout.dumps({"root": str(root), "datasets": rows, "families": ds.FAMILIES, "settings": ds.SETTINGS})
        )
        return
    from rich.table import Table

    table = Table(title=f"Benchmarks under {root}", title_justify="left")
    for column in ("name", "title", "task", "protocol", "status", "images", "layout"):
        table.add_column(column, justify="right" if column == "images" else "left", no_wrap=True)
    colours = {"found": "green", "found*": "yellow", "incomplete": "red", "missing": "dim"}
    for r in rows:
        count = f"{r['count']}/{r['expected']}" if r["expected"] else str(r["count"])
        table.add_row(r["name"], r["title"], r["task"], r["protocol"], f"[{colours[r['status']]}]{r['status']}[/]",
                      count if r["count"] else "–", r["layout"] or "–")  # fmt: skip
    console = _wide_console()
    console.print(table)
    console.print("[dim]found* = usable, with warnings; incomplete = some files there. `irtool datasets check NAME` "
                  "says exactly what is missing.[/]")  # fmt: skip
    console.print("[dim]settings: " + "; ".join(f"{k} = {' '.join(v)}" for k, v in ds.SETTINGS.items() if k != "cdd11")
                  + "; cdd11 = its 11 subsets. Offline: synthetic:noise25 (also rain, haze, blur, lowlight, jpeg).[/]")  # fmt: skip


@command("check", typer_app=datasets_app)
def datasets_check(
    name: Annotated[str, typer.Argument(help="Dataset or family name (rain100l, cbsd68, cdd11, ...).")],
    data_root: _DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="One JSON object instead of text.")] = False,
) -> None:
    """Explain where a benchmark was looked for, what was found, and exactly what is missing."""
    from .evaluation import datasets as ds

    names = ds.expand([name])
    if names[0].startswith("synthetic:"):
        located = ds.locate_synthetic(names[0])
        typer.echo(f"{located.spec.name}: {len(located.pairs)} clean photos in {located.root}; {located.spec.pairing}")
        typer.echo(f"   licence: {located.spec.licence}")
        return
    reports = [ds.check(ds.get_spec(n), data_root) for n in names]
    if as_json:
        typer.echo(
            jsonout.dumps(
                [{"name": r.spec.name, "ok": r.ok, "summary": r.summary, "details": r.lines()[1:]} for r in reports]
            )
        )
    else:
        for r in reports:
            typer.echo("\n".join(r.lines()))
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


# --------------------------------------------------------------------------------------------------------------------
# irtool bench

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
    weights: Annotated[str | None, typer.Option("--weights", "--model", "-m", help=_BENCH_HELP["weights"])] = None,
    config: Annotated[str, typer.Option(help=_BENCH_HELP["config"])] = "MoCE_IR_S",
    gpu: Annotated[int | None, typer.Option("--gpu", help=_BENCH_HELP["gpu"])] = None,
    device: Annotated[str, typer.Option(help=_BENCH_HELP["device"])] = "auto",
    sizes: Annotated[str | None, typer.Option(help=_BENCH_HELP["sizes"])] = None,
    batch: Annotated[str, typer.Option(help=_BENCH_HELP["batch"])] = "1",
    precision: Annotated[str | None, typer.Option(help=_BENCH_HELP["precision"])] = None,
    experts: Annotated[str, typer.Option(help=_BENCH_HELP["experts"])] = "sparse,dense",
    path: Annotated[str, typer.Option(help=_BENCH_HELP["path"])] = "fast",
    compile: Annotated[bool, typer.Option("--compile", metavar="", help=_BENCH_HELP["compile"])] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", metavar="", help=_BENCH_HELP["cuda_graphs"])] = False,
    warmup: Annotated[int, typer.Option(help=_BENCH_HELP["warmup"])] = 2,
    runs: Annotated[int | None, typer.Option(help=_BENCH_HELP["runs"])] = None,
    breakdown: Annotated[
        bool, typer.Option("--breakdown", "--profile", metavar="", help=_BENCH_HELP["breakdown"])
    ] = False,
    threads: Annotated[int | None, typer.Option(help=_BENCH_HELP["threads"])] = None,
    tune_allocator: Annotated[bool, typer.Option(metavar="", help=_BENCH_HELP["tune_allocator"])] = True,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", metavar="", help="Allow pickled objects beyond plain tensors (runs its code)."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print one JSON object instead of a table.")
    ] = False,
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
    if not weights:
        err.print(
            f"[yellow]note:[/] no --weights: benchmarking {source} (speed and memory only; pass --weights or -m NAME for a real model)",
            soft_wrap=True,
        )
    total = bench_mod.count_cases(plan, dev)
    done = [0]

    def progress(row: bench_mod.BenchRow) -> None:
        done[0] += 1
        status = row.error or f"{row.median_ms:.1f} ms"
        err.print(f"[dim][{done[0]}/{total}] {row.label}: {status}[/]")

    report = bench_mod.run_bench(model, dev, plan, source=source, on_row=progress)
    report.allocator_tuned = tuned
    if as_json:
        typer.echo(jsonout.dumps(report.to_dict()))
        return
    _print_bench(report)


def _print_bench(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{report.model['source']} on {report.device} ({report.device_name}), torch {report.torch_version}"
    random = str(report.model["source"]).startswith("random weights")
    table = Table(title=title, caption=f"{report.model['source']}: not a trained model" if random else None)
    numeric = ("median ms", "p90 ms", "MP/s", "peak MB")
    for col in ("case", *numeric, "vs fp32", "router/experts/trunk"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in report.rows:
        if r.error:
            table.add_row(r.label, _plain(r.error, style="red"), *[""] * 5)
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
            r.label,
            f"{r.median_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.megapixels_per_s:.3f}",
            f"{r.peak_memory_mb:.0f}",
            check,
            parts,
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
        _error_line(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        sys.exit(130)
