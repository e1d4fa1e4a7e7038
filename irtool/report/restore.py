"""The `irtool restore --report` page: what happened to each image, from the engine's `RestoreReport`s.

Previews are read back from the files restore wrote (input and output), downscaled and embedded; a click on a
preview opens the full-size file, linked relative to the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._version import __version__
from ..errors import IrtoolError
from ..images import files as io
from . import images, render, svg

if TYPE_CHECKING:
    from ..restoration.engine import Restorer
    from ..restoration.planning import RestoreReport


def relative_href(target: str | Path, report_dir: Path) -> str:
    """A link from the report's folder to `target`, URL-quoted (spaces, '#', '?' and '<' stay part of the name)."""
    path = Path(target).resolve()
    try:
        rel = Path(os.path.relpath(path, report_dir.resolve()))
    except ValueError:  # another drive (Windows): link absolutely
        return path.as_uri()
    return quote(rel.as_posix())


def _previews(report: RestoreReport) -> dict[str, Any]:
    """Data URIs of the input and output previews, or why there are none."""
    out: dict[str, Any] = {"before": None, "after": None, "note": None, "size": None}
    try:
        rgb = io.read_image(report.input).rgb
        small = images.downscale(rgb)
        out["size"] = images.display_size(small.shape[1], small.shape[0])
        out["before"] = images.preview_uri(rgb)
        if report.ok and report.output:
            out["after"] = images.preview_uri(io.read_image(report.output).rgb)
    except (IrtoolError, OSError) as exc:
        out["note"] = f"no preview: {exc}"
    return out


def _model_info(restorer: Restorer | None) -> dict[str, Any]:
    if restorer is None:
        return {
            "source": "none loaded (nothing to restore)",
            "arch": None,
            "parameters": None,
            "fingerprint": None,
            "calibration": "none (no model loaded)",
        }
    from ..archs.spec import spec_of
    from ..devices.policy import precision_name
    from ..restoration.calibration import calibration_in_use, fingerprint

    model = restorer.model
    spec = spec_of(model)
    routing = spec.capabilities.routing
    return {
        "source": restorer.source or type(model).__name__,
        "weights": str(restorer.weights_path) if restorer.weights_path else None,
        "arch": spec.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "fingerprint": fingerprint(model),
        "calibration": calibration_in_use(spec, restorer.calibration),
        "device": str(restorer.device),
        "precision": precision_name(restorer.amp_dtype),
        "layers": routing.layer_names(model) if routing is not None else [],
    }


def build(
    reports: Sequence[RestoreReport],
    *,
    restorer: Restorer | None,
    seconds: float,
    report_path: str | Path,
    workers: int = 2,
) -> dict[str, Any]:
    """The page's context: a summary, the problems, and one entry per input in run order (failures included)."""
    report_dir = Path(report_path).resolve().parent
    model = _model_info(restorer)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        previews = list(pool.map(_previews, [r for r in reports if r.status != "skipped"]))
    shown = iter(previews)
    entries = []
    for n, r in enumerate(reports):
        entry: dict[str, Any] = {
            "id": f"img{n}",
            "r": r,
            "name": r.input,
            "status": r.status,
            "input_href": relative_href(r.input, report_dir) if Path(r.input).exists() else None,
            "output_href": relative_href(r.output, report_dir)
            if r.ok and r.output and Path(r.output).exists()
            else None,
            "previews": next(shown)
            if r.status != "skipped"
            else {"before": None, "after": None, "note": None, "size": None},
            "routing_svg": svg.routing_grid(r.experts, r.gates, model.get("layers")) if r.experts else None,
            "megapixels": r.megapixels,
        }
        entries.append(entry)
    ok = [r for r in reports if r.ok]
    megapixels = sum(r.megapixels for r in ok)
    precisions = sorted({r.precision for r in ok if r.precision})
    notes = list(restorer.notes) if restorer is not None else []
    if restorer is not None and any(r.degradation == "unknown" for r in reports):
        from ..restoration.calibration import unknown_explanation

        notes.append(unknown_explanation(restorer.calibration))
    return {
        "title": "irtool restore report",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "irtool": __version__,
        "model": model,
        "counts": {
            "total": len(reports),
            "ok": len(ok),
            "failed": sum(r.failed for r in reports),
            "skipped": sum(r.status == "skipped" for r in reports),
        },
        "seconds": seconds,
        "megapixels": megapixels,
        "mps": megapixels / seconds if seconds > 0 else None,
        "precisions": precisions,
        "notes": notes,
        "failures": [e for e in entries if e["status"] == "failed"],
        "warned": [e for e in entries if e["r"].warnings and e["status"] == "ok"],
        "entries": entries,
    }


def write_report(
    path: str | Path, reports: Sequence[RestoreReport], *, restorer: Restorer | None, seconds: float, workers: int = 2
) -> Path:
    """Render and write the restore report; raises IrtoolError (naming `irtool[report]`) without Jinja2."""
    render.environment()  # fail before reading any image when Jinja2 is missing
    context = build(reports, restorer=restorer, seconds=seconds, report_path=path, workers=workers)
    return render.write(path, render.render("restore.html.j2", context))
