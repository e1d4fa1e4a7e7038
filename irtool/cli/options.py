"""Options several commands share, declared once, and the parsers of their values.

A command declares `trust: Trust = False` rather than spelling `--trust-checkpoint` out again; options whose help
differs per command (`--json`) come from a function that takes the help line. Importing this module imports no
torch (only typer and the standard library), so `irtool --help` stays instant.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import IrtoolError


class Precision(str, enum.Enum):
    """Inference precision of `restore` and `calibrate`."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def json_flag(help: str = "Print JSON on stdout instead of text.", **settings: Any) -> Any:
    """`--json`: in every command a flag that prints JSON on stdout (files are written by options of their own)."""
    return typer.Option("--json", help=help, **settings)


Trust = Annotated[
    bool,
    typer.Option("--trust-checkpoint", help="Allow pickled objects beyond plain tensors (runs code from the file)."),
]
JsonFlag = Annotated[bool, json_flag()]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no table.")]

DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."


def device_option(help: str = DEVICE_HELP, **settings: Any) -> Any:
    """`--device/-d`: the torch device a command runs on."""
    return typer.Option("--device", "-d", help=help, **settings)


Device = Annotated[str, device_option()]
GpuNumber = Annotated[int | None, typer.Option("--gpu", "-g", help="Same as --device cuda:N.", show_default=False)]


def gpu_list_option(help: str) -> Any:
    """`--gpu/-g` taking N, a list 0,1,3 or `all` (restore, eval: several GPUs mean one worker process each)."""
    return typer.Option("--gpu", "-g", help=help, show_default=False)


PrecisionOption = Annotated[
    Precision, typer.Option("--precision", help="auto: bf16 autocast on CUDA GPUs that have it, else fp32.")
]

Model = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Manifest name of the checkpoint (see weights_manifest.json), e.g. moce_ir.aio5."
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint file or folder (.ckpt, .pth, .safetensors). With neither --model nor --weights: the default "
        "model.",
    ),
]
Router = Annotated[str | None, typer.Option("--router", help="LoRA-IR router checkpoint (its second file).")]

ConfigFields = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        help="FIELD=VALUE (repeatable): a config field the weights cannot show, e.g. top_k=2; checked against the "
        "tensors. VALUE is read as JSON (2, 2.0, [1,2], true), else as text.",
        show_default=False,
    ),
]
RouterConfigFields = Annotated[
    list[str] | None,
    typer.Option(
        "--router-config",
        help="FIELD=VALUE (repeatable): the same for LoRA-IR's CLIP router, e.g. num_heads=3.",
        show_default=False,
    ),
]
DataRoot = Annotated[
    Path | None, typer.Option("--data-root", help="Datasets folder (default: $IRTOOL_DATA, else the user data dir).")
]


def config_fields(values: list[str] | None, flag: str = "--config") -> dict[str, Any] | None:
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


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """`1,1,1,2` -> (1, 1, 1, 2), or a usage error naming `flag`."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected comma-separated integers, e.g. 1,1,1,2", param_hint=flag
        ) from None


def gpu_numbers(gpu: str | None) -> list[int] | None:
    """`--gpu N`, `--gpu 0,1,3` or `--gpu all` as a list of GPU numbers (None without --gpu)."""
    from ..shard import parse_gpus

    try:
        return parse_gpus(gpu)
    except IrtoolError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--gpu") from None


def device_for(device: str, gpu: int | None) -> str:
    """The device `--device` and `--gpu N` name together: `--gpu N` means cuda:N."""
    return f"cuda:{gpu}" if gpu is not None else device
