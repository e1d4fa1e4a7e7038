"""`irtool degrade`: seeded synthetic degradations of clean images, to make test images."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import IrtoolError
from . import output
from .options import json_flag


class DegradationKind(str, enum.Enum):
    noise = "noise"
    rain = "rain"
    haze = "haze"
    blur = "blur"
    lowlight = "lowlight"
    jpeg = "jpeg"


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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, json_flag("One JSON object per image written on stdout instead of its path.")] = False,
) -> None:
    """Make test images: add seeded synthetic noise, rain, haze, blur, low light or JPEG artefacts."""
    from ..degrade import resolve_level
    from ..images import files as io
    from ..restoration.planning import expand_inputs

    try:
        resolve_level(kind.value, level)
    except ValueError as exc:
        output.fail(f"--level {level}: {exc}", code=2)
    found, failed = expand_inputs([source], Path(destination).resolve())
    for job in failed:
        output.error(job.error)
    single_file = Path(source).is_file() and Path(destination).suffix.lower() in io.IMAGE_SUFFIXES
    bad = len(failed)
    for n, (_, src, rel) in enumerate(found):
        dst = Path(destination) if single_file else Path(destination) / rel / src.name
        try:
            _degrade_file(src, dst, kind.value, level, seed + n, overwrite)
        except IrtoolError as exc:
            output.error(exc)
            bad += 1
            continue
        if as_json:
            output.echo_json(
                {"input": str(src), "output": str(dst), "kind": kind.value, "level": level, "seed": seed + n}
            )
        else:
            output.line(dst)
    raise typer.Exit(1 if bad else 0)


def _degrade_file(src: Path, dst: Path, kind: str, level: Any, seed: int, overwrite: bool) -> None:
    """Read `src`, degrade its colour (the file's own dtype; alpha stays as it is) and write `dst`."""
    from dataclasses import replace

    from ..degrade import degrade as apply
    from ..images import files as io

    image = io.read_image(src)
    color = io.to_array(replace(image, alpha=None))
    degraded = io.from_array(apply(color, kind, level, seed=seed))
    io.write_image(dst, replace(image, pixels=degraded.pixels, _rgb=None), overwrite=overwrite)
