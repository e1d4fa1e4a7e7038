"""The `irtool` command line: thin Typer commands over the library.

Each command parses its options, calls the library and renders the result; the commands live one group to a
module (restore.py, evaluate.py, train.py, ...), the options several of them share in options.py, what every command
prints (error lines, JSON) in output.py, and how every command runs (errors as one line, flags shown as flags) in
base.py. Heavy modules (torch and everything that imports it) are imported inside the commands, so `irtool --help`
and `irtool --version` stay instant.

Exit status: 0 all done; 1 an input or checkpoint could not be processed (one line on stderr says which and why);
2 bad usage; 130 interrupted (one line says what was done and how to go on).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import IrtoolError
from . import (
    bench,
    calibrate,
    datasets,
    degrade,
    evaluate,
    inspect_checkpoint,
    output,
    report,
    restore,
    train,
    weights,
)
from .base import IrtoolGroup, register

_HELP = "All-in-one image restoration: remove noise, rain, haze, blur and low light with MoCE-IR or LoRA-IR."

#: the top-level --help's closing lines: a first command that works offline, then where to go next
_GETTING_STARTED = (
    "Getting started: irtool restore photo.jpg out/ restores photo.jpg into out/ with the built-in model (no "
    "download; CPU is enough) and names what it found in each image.\n\n"
    "Official models: irtool weights list, irtool weights fetch moce_ir.aio5, then irtool restore photos/ out/ "
    "--model moce_ir.aio5. Each command's options: irtool COMMAND --help."
)

app = typer.Typer(
    name="irtool",
    help=_HELP,
    epilog=_GETTING_STARTED,
    cls=IrtoolGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"irtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """All-in-one image restoration: remove noise, rain, haze, blur and low light with MoCE-IR or LoRA-IR."""


register(app, inspect_checkpoint.inspect, "inspect")
register(app, train.train, "train")
register(app, restore.restore, "restore", no_args_is_help=True)
register(app, degrade.degrade, "degrade", no_args_is_help=True)
register(app, calibrate.calibrate, "calibrate")
register(app, evaluate.eval_command, "eval")
register(app, report.report, "report", no_args_is_help=True)
register(app, bench.bench, "bench")

weights_app = typer.Typer(
    name="weights",
    help="Checkpoints: list the official ones, fetch, import your own, verify, convert to safetensors, remove.",
    cls=IrtoolGroup,
    no_args_is_help=True,
)
register(weights_app, weights.weights_list, "list")
register(weights_app, weights.weights_fetch, "fetch")
register(weights_app, weights.weights_import, "import")
register(weights_app, weights.weights_verify, "verify")
register(weights_app, weights.weights_convert, "convert")
register(weights_app, weights.weights_remove, "remove")
register(weights_app, weights.weights_show, "show")
app.add_typer(weights_app, name="weights")

datasets_app = typer.Typer(
    name="datasets",
    help="Benchmark datasets: where irtool looks for them and what is missing.",
    cls=IrtoolGroup,
    no_args_is_help=True,
)
register(datasets_app, datasets.datasets_list, "list")
register(datasets_app, datasets.datasets_check, "check")
app.add_typer(datasets_app, name="datasets")


def main() -> None:
    """Console entry point: run the app, turning irtool's errors into one line and an exit status."""
    try:
        app()
    except IrtoolError as exc:
        output.error(exc)
        sys.exit(1)
