"""Jinja2 -> one self-contained HTML file. The stylesheet and the script are inlined, and the page's Content Security
Policy allows exactly those two (by their sha256) and images from data: URIs and local files: nothing can be fetched
from a network, and an injected <script> would not run even if escaping failed.

Jinja2 is optional (`pip install 'irtool[report]'`); without it `environment()` raises one IrtoolError naming the extra.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import IrtoolError
from ..images.files import write_bytes_atomic

MISSING = "--report needs Jinja2: pip install 'irtool[report]'"


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@lru_cache(maxsize=1)
def environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise IrtoolError(MISSING) from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,  # every file name, error and note is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_number
    env.filters["signed"] = lambda v, digits=2: fmt_number(v, digits, signed=True)
    env.filters["delta_class"] = delta_class
    env.filters["sortkey"] = sort_key
    return env


def fmt_number(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    if value == "inf" or value == float("inf"):
        return "∞"
    if isinstance(value, str):
        return value
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def sort_key(value: Any) -> str:
    """A table cell's sort value: numbers as numbers (∞ sorts last), missing values first."""
    if value is None:
        return "-1e308"
    if value == "inf" or value == float("inf"):
        return "1e308"
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def delta_class(value: Any, tolerance: float = 0.005, near: float = 0.1) -> str:
    """CSS class of a difference from the paper: matches (within rounding), slightly below, clearly below/above."""
    if value is None or isinstance(value, str):
        return ""
    if value >= -tolerance:
        return "good"
    return "near" if value >= -near else "bad"


def render(template: str, context: dict[str, Any]) -> str:
    env = environment()
    css, js = _static("report.css"), _static("report.js")
    csp = (
        "default-src 'none'; img-src data: file:; "
        f"style-src {_sha256(css)}; script-src {_sha256(js)}; base-uri 'none'; form-action 'none'"
    )
    return env.get_template(template).render(css=css, js=js, csp=csp, **context)


def write(path: str | Path, html: str) -> Path:
    """Write the page atomically (a reader never sees half a report)."""
    path = Path(path)
    write_bytes_atomic(path, html.encode("utf-8"), overwrite=True)
    return path
