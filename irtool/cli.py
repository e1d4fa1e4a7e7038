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
