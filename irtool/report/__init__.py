"""Self-contained HTML reports for `irtool restore --report` and `irtool eval --report`, and `irtool report` to merge
eval report JSONs into one comparison page.

- `restore.py`: the restore page from the engine's per-image reports (previews read back from the files written).
- `evaluation.py`: the eval page from one or more eval reports (their JSON form), with a `Gallery` that keeps, while
  eval runs, the few images the page shows (worst, best, chosen crops), so nothing has to be run twice.
- `images.py` previews, heat-maps, crops, the PNG figure; `svg.py` inline charts; `render.py` Jinja2 and the CSP.

Jinja2 is the only extra dependency (`irtool[report]`); the viewer is plain HTML, CSS and JavaScript in templates/.
"""

from __future__ import annotations


def check_available() -> None:
    """Raise IrtoolError naming `irtool[report]` when Jinja2 is missing."""
    from .render import environment

    environment()
