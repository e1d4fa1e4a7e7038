"""`irtool report`: eval report JSONs merged into one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import output
from .options import json_flag


def report(
    reports: Annotated[
        list[Path],
        typer.Argument(
            metavar="REPORT.json...",
            help="Eval reports (`irtool eval --json-file FILE`), one model each or a list.",
            show_default=False,
        ),
    ],
    page_path: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")] = Path("report.html"),
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure", help="Save the crop NAME:x,y,w,h from every model side by side as a PNG beside the page."
        ),
    ] = None,
    as_json: Annotated[
        bool, json_flag('Print {"report": PAGE, "figures": [PNG, ...]} on stdout instead of the paths.')
    ] = False,
) -> None:
    """Merge eval report JSONs into one HTML page: every model's scores side by side, per dataset and per image.

    Runs made with --save-images (and --save-inputs for noise synthesised at test time) also bring their pictures: worst and best images, and the same crops from every model.
    """
    from ..report import check_available
    from ..report.evaluation import load_reports, merge, parse_figure, write_report

    check_available()
    figures = [parse_figure(text) for text in figure or []]
    loaded = load_reports(reports)
    page, pngs = write_report(page_path, loaded, merge(loaded, figures))
    if as_json:
        output.echo_json({"report": str(page), "figures": [str(p) for p in pngs]})
        return
    for path in [page, *pngs]:
        output.line(path)
