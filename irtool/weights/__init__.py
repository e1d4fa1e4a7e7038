"""Checkpoints by name: the catalogue of what exists, and the local store that holds the files.

- `catalogue`: the manifest (`weights_manifest.json`), its entries, the default-model ranking, which files a name
  means. Standard library and platformdirs only, never torch, so `irtool weights list` is instant.
- `store`: fetch (through `download`, and `drive` for Google Drive), import, convert, verify, remove. Checks files with the loader, imported inside
  its functions. Dependencies run one way: catalogue <- irtool.loading <- store.

Everything both modules offer is reachable from here, looked up when used; the store loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import catalogue

_STORE_NAMES = {
    "Checked",
    "Fetched",
    "Imported",
    "Removed",
    "STORE_DTYPES",
    "Verified",
    "check_checkpoint",
    "check_name",
    "checkpoint_file",
    "convert",
    "derive_name",
    "fetch",
    "import_checkpoint",
    "known_archs",
    "remove",
    "verify",
}


def __getattr__(name: str) -> Any:
    # Looked up on every use, not copied at import: a test (or a caller) that replaces catalogue.load_manifest is
    # seen by everyone who reaches it through irtool.weights.
    if name in _STORE_NAMES:
        return getattr(importlib.import_module(f"{__name__}.store"), name)
    if _own(name):
        return getattr(catalogue, name)  # the catalogue's own constants, functions and classes, not its imports
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _own(name: str) -> bool:
    value = getattr(catalogue, name, None) if not name.startswith("_") else None
    return value is not None and (name.isupper() or getattr(value, "__module__", None) == catalogue.__name__)


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for n in dir(catalogue) if _own(n)), *_STORE_NAMES})
