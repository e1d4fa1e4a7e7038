"""The weights manifest and the local weights cache.

`weights_manifest.json` names every official checkpoint irtool knows (arch, variant, setting, files, source, the
paper's figures). This module finds entries by name or alias and finds their files in the cache directory
(`IRTOOL_HOME`, else the platformdirs user cache dir). Standard library and platformdirs only, never torch, so that
`irtool weights list` stays instant.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WeightsNotFoundError

_PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "weights_manifest.json"


def manifest_path() -> Path:
    """The manifest shipped in the package (a source checkout keeps it at the top level too)."""
    packaged = _PACKAGE_DIR / MANIFEST_NAME
    return packaged if packaged.is_file() else _PACKAGE_DIR.parent / MANIFEST_NAME


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    with open(manifest_path(), encoding="utf-8") as f:
        return json.load(f)


def cache_dir() -> Path:
    """Where downloaded and imported weights live: $IRTOOL_HOME/weights, else the user cache dir."""
    home = os.environ.get("IRTOOL_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    import platformdirs

    return Path(platformdirs.user_cache_dir("irtool")) / "weights"


@dataclass(frozen=True)
class Entry:
    """One manifest entry."""

    name: str
    data: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.data.get("files", [])

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    def local_files(self) -> dict[str, Path]:
        """role -> path of each file of this entry present in the cache. An imported safetensors copy
        (`<role>.safetensors`) stands in for its original."""
        found: dict[str, Path] = {}
        for spec in self.files:
            role = spec.get("role", "weights")
            for candidate in (self.folder / f"{role}.safetensors", self.folder / spec["filename"]):
                if candidate.is_file():
                    found[role] = candidate
                    break
        return found


def entries() -> list[Entry]:
    return [Entry(name, data) for name, data in load_manifest()["models"].items()]


def find_entry(name: str) -> Entry | None:
    """The entry called `name` or having it as an alias (case-insensitive)."""
    wanted = name.strip().lower()
    for entry in entries():
        if entry.name.lower() == wanted or wanted in (a.lower() for a in entry.data.get("aliases", [])):
            return entry
    return None


def resolve(name: str) -> dict[str, Path]:
    """role -> local path for a manifest name; raises WeightsNotFoundError with the way to get the files."""
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in entries())
        raise WeightsNotFoundError(f"{name}: neither a file nor a known model name (known: {known})")
    found = entry.local_files()
    missing = [spec["filename"] for spec in entry.files if spec.get("role", "weights") not in found]
    if missing:
        raise WeightsNotFoundError(
            f"{entry.name}: not downloaded yet ({', '.join(missing)} missing from {entry.folder}); "
            f"run `irtool weights fetch {entry.name}`, or download it yourself and run "
            f"`irtool weights import FILE --name {entry.name}`"
        )
    return found
