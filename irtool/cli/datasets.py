"""`irtool datasets ...`: where irtool looks for the benchmark datasets and what is missing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import output
from .options import DataRoot, json_flag


def datasets_list(
    data_root: DataRoot = None,
    as_json: Annotated[bool, json_flag("One JSON object instead of a table.")] = False,
) -> None:
    """Every benchmark irtool knows: found or missing under the data root, with counts."""
    from ..evaluation import datasets as ds

    root = ds.data_root(data_root)
    rows = [_dataset_row(spec, root) for spec in ds.DATASETS.values() if spec.split == "test"]
    if as_json:
        output.echo_json({"root": str(root), "datasets": rows, "families": ds.FAMILIES, "settings": ds.SETTINGS})
        return
    from rich.table import Table

    table = Table(title=output.plain(f"Benchmarks under {root}"), title_justify="left")
    for column in ("name", "title", "task", "protocol", "status", "images", "layout"):
        table.add_column(column, justify="right" if column == "images" else "left", no_wrap=True)
    colours = {"found": "green", "found*": "yellow", "incomplete": "red", "missing": "dim"}
    for r in rows:
        count = f"{r['count']}/{r['expected']}" if r["expected"] else str(r["count"])
        table.add_row(r["name"], r["title"], r["task"], r["protocol"], output.plain(r["status"], colours[r["status"]]),
                      count if r["count"] else "–", r["layout"] or "–")  # fmt: skip
    console = output.wide_stdout()
    console.print(table)
    console.print("[dim]found* = usable, with warnings; incomplete = some files there. `irtool datasets check NAME` "
                  "says exactly what is missing.[/]")  # fmt: skip
    console.print("[dim]settings: " + "; ".join(f"{k} = {' '.join(v)}" for k, v in ds.SETTINGS.items() if k != "cdd11")
                  + "; cdd11 = its 11 subsets. Offline: synthetic:noise25 (also rain, haze, blur, lowlight, jpeg).[/]")  # fmt: skip


def _dataset_row(spec: Any, root: Any) -> dict[str, Any]:
    from ..evaluation import datasets as ds

    report = ds.check(spec, root)
    found = report.located
    if found is None:
        status = "incomplete" if any(p.present for p in report.probes) else "missing"
    else:
        status = "found" if not found.warnings else "found*"
    return {
        "name": spec.name, "title": spec.title, "task": spec.task, "protocol": spec.protocol, "status": status,
        "count": len(found.pairs) if found else 0, "expected": spec.expected,
        "layout": found.layout.name if found else None, "summary": report.summary,
    }  # fmt: skip


def datasets_check(
    name: Annotated[str, typer.Argument(help="Dataset or family name (rain100l, cbsd68, cdd11, ...).")],
    data_root: DataRoot = None,
    as_json: Annotated[bool, json_flag("One JSON object instead of text.")] = False,
) -> None:
    """Explain where a benchmark was looked for, what was found, and exactly what is missing."""
    from ..evaluation import datasets as ds

    names = ds.expand([name])
    if names[0].startswith("synthetic:"):
        located = ds.locate_synthetic(names[0])
        summary = f"{located.spec.name}: {len(located.pairs)} clean photos in {located.root}; {located.spec.pairing}"
        licence = f"licence: {located.spec.licence}"
        if as_json:
            output.echo_json([{"name": located.spec.name, "ok": True, "summary": summary, "details": [licence]}])
        else:
            output.line(summary)
            output.line(f"   {licence}")
        return
    reports = [ds.check(ds.get_spec(n), data_root) for n in names]
    if as_json:
        output.echo_json(
            [{"name": r.spec.name, "ok": r.ok, "summary": r.summary, "details": r.lines()[1:]} for r in reports]
        )
    else:
        for r in reports:
            output.line("\n".join(r.lines()))
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)
