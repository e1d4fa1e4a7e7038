"""`irtool calibrate`: teach irtool to name degradations from a MoCE-IR checkpoint's routing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import IrtoolError
from . import output
from .options import (
    ConfigFields,
    Device,
    GpuNumber,
    Model,
    Precision,
    PrecisionOption,
    Trust,
    Weights,
    config_fields,
    device_for,
    json_flag,
)

_CLASSES = ("clean", "noise", "rain", "haze", "blur", "defocus", "lowlight", "jpeg")


def calibrate(
    model: Model = None,
    weights_file: Weights = None,
    clean_dir: Annotated[
        str | None,
        typer.Option(
            "--clean-dir", help="Folder of clean photos (default: scikit-image's CC0 sample photos, if installed)."
        ),
    ] = None,
    classes: Annotated[
        str, typer.Option("--classes", help="Comma-separated degradations to tell apart ('clean' = none).")
    ] = ",".join(_CLASSES),
    levels: Annotated[
        str, typer.Option("--levels", help="Comma-separated levels of each degradation.")
    ] = "light,medium,heavy",
    merge: Annotated[
        str | None,
        typer.Option(
            "--merge",
            help="Count one kind's crops as another class, e.g. defocus=blur (comma-separated pairs): for kinds the "
            "network routes alike.",
        ),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Side of the square crops routed (px).")] = 256,
    crops: Annotated[int, typer.Option("--crops", help="Crops per photo.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of crops and degradations.")] = 0,
    output_path: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Calibration file (default: <weights stem>.<fingerprint>.calibration.json in the user's data folder, "
            "$IRTOOL_HOME/calibrations if set).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing calibration file.")] = False,
    device: Device = "auto",
    gpu: GpuNumber = None,
    precision: PrecisionOption = Precision.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Crops per forward pass.")] = 4,
    min_accuracy: Annotated[
        float,
        typer.Option(
            "--min-accuracy",
            help="Classes named right less often than this on held-out photos are reported as 'unknown' (0-1).",
        ),
    ] = 0.7,
    trust_checkpoint: Trust = False,
    as_json: Annotated[bool, json_flag("Print the calibration summary as JSON.")] = False,
    config: ConfigFields = None,
) -> None:
    """Teach irtool to name degradations from a MoCE-IR checkpoint's routing.

    Degrades clean photos with known synthetic degradations, records the routing each gets, and stores a nearest-centroid classifier in your data folder (never inside the installed package); `irtool restore` then prefers it for these weights and names each image's degradation with a confidence. Accuracy is measured on photos left out of the fit.
    """
    from ..calibrate import clean_photos
    from ..degrade import LEVEL_NAMES
    from ..restoration.calibration import fingerprint, user_calibration_path
    from ..restoration.engine import Restorer
    from ..restoration.planning import RestoreOptions

    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    level_list = [lv.strip() for lv in levels.split(",") if lv.strip()]
    if any(lv not in LEVEL_NAMES for lv in level_list):
        output.fail(f"--levels {levels}: use names from {', '.join(LEVEL_NAMES)}", code=2)
    merged: dict[str, str] = {}
    for pair in (merge or "").split(","):
        kind, sep, into = (part.strip() for part in pair.partition("="))
        if not pair.strip():
            continue
        if not sep or kind not in wanted or into not in wanted or kind == into:
            output.fail(f"--merge {merge}: pairs KIND=CLASS of two different --classes, e.g. defocus=blur", code=2)
        merged[kind] = into
    if size < 16 or crops < 1:
        output.fail("--size must be at least 16 and --crops at least 1", code=2)
    if not 0.0 <= min_accuracy <= 1.0:
        output.fail(f"--min-accuracy {min_accuracy}: a fraction between 0 and 1", code=2)
    options = RestoreOptions(model=model, weights=weights_file, device=device_for(device, gpu),
                             precision=precision.value, trust=trust_checkpoint, config=config_fields(config))  # fmt: skip
    photo_paths = clean_photos(clean_dir)
    restorer = Restorer.load(options)
    if restorer.spec.capabilities.classifier is not None:
        output.fail("this model names degradations itself (it has a degradation classifier); no calibration needed")
    for note in restorer.notes:
        if "calibration" not in note:
            output.note(note)
    mark = fingerprint(restorer.model)
    target = Path(output_path) if output_path else user_calibration_path(restorer.weights_path or "model", mark)
    _check_target(target, overwrite)  # before minutes of routing, not after
    result = _run_calibration(
        restorer, photo_paths, mark, classes=wanted, levels=level_list, size=size, crops=crops, seed=seed,
        batch_size=batch_size, min_accuracy=min_accuracy, merge=merged,
    )  # fmt: skip
    try:
        result.save(target, overwrite=overwrite)
    except IrtoolError as exc:
        output.fail(f"{exc} (pass --output FILE to save the calibration elsewhere)")
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
        output.echo_json(summary)
        return
    _print_calibration(result, summary, min_accuracy, target)


def _check_target(target: Path, overwrite: bool) -> None:
    """One line and exit when the calibration may not be written there: inside the installed package (commands never
    write into it), or over an existing file without --overwrite."""
    import irtool

    package = Path(irtool.__file__).resolve().parent
    if target.expanduser().resolve().is_relative_to(package):
        output.fail(
            f"{target}: inside the installed irtool package, where no command writes; leave out --output (your data "
            "folder) or choose a file elsewhere",
            code=2,
        )
    if target.exists() and not overwrite:
        output.fail(f"{target}: already exists; pass --overwrite to replace it", code=1)


def _run_calibration(restorer: Any, photo_paths: list[Path], mark: str, **settings: Any) -> Any:
    """Read the clean photos (an unreadable one is skipped with a warning) and calibrate on them, with a progress
    bar on a terminal."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..calibrate import calibrate as run_calibration
    from ..images import files as io
    from ..images import pixels

    photos = []
    for path in photo_paths:
        try:
            photos.append(pixels.from_float(io.read_image(path).rgb, np.uint8))  # RGB, gray repeated
        except IrtoolError as exc:
            output.warning(f"{exc}; skipped")
    err = output.stderr()
    progress = Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TextColumn("crops"),
                        TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal)  # fmt: skip
    with progress:
        task = progress.add_task("calibrate", total=None)
        return run_calibration(
            restorer.route,
            photos,
            fingerprint=mark,
            device=restorer.device,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            info={
                "weights": str(restorer.weights_path) if restorer.weights_path else None,
                "clean": [str(p) for p in photo_paths],
            },
            **settings,
        )


def _print_calibration(result: Any, summary: dict[str, Any], min_accuracy: float, target: Path) -> None:
    """The confusion matrix of the held-out photos, the classes reported as unknown, and where it was saved."""
    from rich.table import Table

    table = Table(
        title=f"held-out accuracy {result.accuracy:.0%} over {summary['photos']} photos (leave one photo out)",
        box=None,
        header_style="bold",
    )
    table.add_column("true \\ named")
    for name in result.classes:
        table.add_column(output.plain(name), justify="right")
    table.add_column("accuracy", justify="right")
    for name, row in zip(result.classes, result.confusion):
        table.add_row(output.plain(name), *[str(v) for v in row], f"{result.per_class_accuracy.get(name, 0):.0%}")
    output.stdout().print(table)
    if result.unreliable:
        output.line(f"named below {min_accuracy:.0%}, so reported as 'unknown': {', '.join(result.unreliable)}")
    output.line(f"saved {target}")
