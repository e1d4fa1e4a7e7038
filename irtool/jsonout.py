"""JSON that every parser reads: NaN and infinities (which Python's json writes as bare `NaN`, `Infinity`, not JSON)
become null. Standard library only."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (also inside lists, tuples and dicts) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps that always gives valid JSON (non-finite numbers as null)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
