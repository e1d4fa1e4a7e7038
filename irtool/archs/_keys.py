"""Helpers shared by the architecture files: reading a network's shape from its state-dict keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def count_children(sd: Mapping[str, Any], prefix: str) -> int:
    """Number of numbered children `prefix.0`, `prefix.1`, ... present among the keys."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n
