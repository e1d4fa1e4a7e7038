"""JSON that every parser reads: NaN and infinities (which Python's json writes as bare `NaN`, `Infinity`, not JSON)
become null. Standard library only."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any, *, infinity: str | None = None) -> Any:
    """`obj` with every non-finite float (also inside lists, tuples and dicts) replaced by None; with `infinity`
    given, +-inf become that string ("inf", "-inf": an eval's PSNR of identical images) and only NaN becomes None."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if infinity is None or math.isnan(obj):
            return None
        return infinity if obj > 0 else "-" + infinity
    if isinstance(obj, dict):
        return {k: finite(v, infinity=infinity) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, infinity=infinity) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps that always gives valid JSON (non-finite numbers as null)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
