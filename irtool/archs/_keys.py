"""Helpers shared by the architecture files: reading a network's shape from its state-dict keys, reading configs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def count_children(sd: Mapping[str, Any], prefix: str) -> int:
    """Number of numbered children `prefix.0`, `prefix.1`, ... present among the keys."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def config_fields(config_class: Any, d: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `d` that are fields of the dataclass `config_class`, JSON lists turned back into tuples (the
    shared half of every config's `from_dict`; unknown keys, e.g. from a newer irtool, are dropped)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
