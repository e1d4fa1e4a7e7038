"""The weights catalogue, without torch: the manifest, its entries, the cache layout, which files a name means, and
which model is the default. Fetching, importing and checking files is `irtool.weights.store`.

`weights_manifest.json` names every official checkpoint irtool knows (arch, variant, setting, files, source, the
paper's figures); `<cache>/local_manifest.json` adds the user's own imports, in the same format, marked `"local"`.
Both are validated by `weights_manifest.schema.json` in the tests.

Cache layout (`cache_dir()`: `$IRTOOL_HOME/weights`, else the platformdirs user cache dir plus `weights/`):

    <cache>/<name>/<filename>                 a fetched file, under its manifest filename (e.g. last.ckpt)
    <cache>/<name>/<role>.safetensors         an imported copy (role: weights, ir, router); used when present
    <cache>/<name>/state.json                 per role: sha256, size, where the file came from, when
    <cache>/.downloads/<name>/<filename>*.part an interrupted download, resumed by the next fetch (from Google
                                              Drive: gdown's part file, and <filename>.drive.json naming the file)
    <cache>/local_manifest.json               the user's own imported checkpoints

Importing this module needs the standard library and platformdirs only, never torch, so `irtool weights list` is
instant; the loader reads it, and the store (which checks files through the loader) builds on both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import (
    IrtoolError,
    WeightsNotFoundError,
)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # irtool/: the manifest and built-in models ship there
MANIFEST_NAME = "weights_manifest.json"
SCHEMA_NAME = "weights_manifest.schema.json"
LOCAL_MANIFEST_NAME = "local_manifest.json"
STATE_NAME = "state.json"
MIRROR_ENV = "IRTOOL_WEIGHTS_MIRROR"
ROLES = ("weights", "ir", "router")  # weights: one-file models (MoCE-IR); ir and router: LoRA-IR's two files
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")  #: the files a checkpoint may come as
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# File stems that say nothing about the model; such a file is named after its folder (MoCE_IR_S_AIO3/last.ckpt).
_GENERIC_STEMS = {
    "last",
    "best",
    "final",
    "latest",
    "model",
    "model_best",
    "weights",
    "checkpoint",
    "ckpt",
    "net",
    "state_dict",
    "pytorch_model",
}

#: progress(filename, bytes_done, bytes_total or None)
FileProgress = Callable[[str, int, "int | None"], None]


def megabytes(size: int | None, approx: bool = False) -> str:
    """A byte count as "12.3 MB" ("≈12.3 MB" for an approximate one, "?" for an unknown one)."""
    if size is None:
        return "?"
    return f"{'≈' if approx else ''}{size / 1e6:,.{0 if size >= 1e7 else 1}f} MB"


def manifest_path() -> Path:
    """The manifest: inside an installed package (the build copies it there), else at the top of the checkout,
    its one copy in the source tree."""
    packaged = _PACKAGE_DIR / MANIFEST_NAME
    return packaged if packaged.is_file() else _PACKAGE_DIR.parent / MANIFEST_NAME


def schema_path() -> Path:
    return _PACKAGE_DIR / SCHEMA_NAME


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


def local_manifest_path() -> Path:
    return cache_dir() / LOCAL_MANIFEST_NAME


def load_local_manifest() -> dict[str, Any]:
    """The user's imported entries ({"schema_version": 1, "models": {}} when there are none)."""
    path = local_manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"schema_version": 1, "default": None, "models": {}}
    except (OSError, ValueError) as exc:
        raise IrtoolError(f"{path}: unreadable ({exc}); delete it and import your checkpoints again") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise IrtoolError(f"{path}: not an irtool manifest; delete it and import your checkpoints again")
    return data


# --------------------------------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True)
class Entry:
    """One manifest entry (official, or the user's own when `local`)."""

    name: str
    data: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def variant(self) -> str | None:
        return self.data.get("variant")

    @property
    def setting(self) -> str | None:
        return self.data.get("setting")

    @property
    def aliases(self) -> list[str]:
        return list(self.data.get("aliases", []))

    @property
    def local(self) -> bool:
        return bool(self.data.get("local"))

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.data.get("files", [])

    @property
    def roles(self) -> list[str]:
        return [spec.get("role", "weights") for spec in self.files]

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    @property
    def downloads(self) -> Path:
        """Where this entry's unfinished downloads wait."""
        return cache_dir() / ".downloads" / self.name

    def file_spec(self, role: str) -> dict[str, Any] | None:
        return next((spec for spec in self.files if spec.get("role", "weights") == role), None)

    @property
    def built_in(self) -> bool:
        """True for a model that ships inside the package (its files name a `packaged` path)."""
        return any(spec.get("packaged") for spec in self.files)

    def packaged_files(self) -> dict[str, Path]:
        """role -> path of each file of this entry shipped inside the irtool package (the built-in default)."""
        found: dict[str, Path] = {}
        for spec in self.files:
            if spec.get("packaged") and (_PACKAGE_DIR / spec["packaged"]).is_file():
                found[spec.get("role", "weights")] = _PACKAGE_DIR / spec["packaged"]
        return found

    def local_files(self) -> dict[str, Path]:
        """role -> path of each file of this entry on this machine: in the cache (an imported safetensors copy,
        `<role>.safetensors`, stands in for its original), else shipped inside the package."""
        found: dict[str, Path] = {}
        for spec in self.files:
            role = spec.get("role", "weights")
            for candidate in (self.folder / f"{role}.safetensors", self.folder / spec["filename"]):
                if candidate.is_file():
                    found[role] = candidate
                    break
        return {**self.packaged_files(), **found}

    def state(self) -> dict[str, dict[str, Any]]:
        """role -> what the cache recorded about that file (see `_record`); {} when nothing was recorded."""
        try:
            data = json.loads((self.folder / STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}


def entries() -> list[Entry]:
    """Official entries first, then the user's local ones."""
    official = [Entry(name, data) for name, data in load_manifest()["models"].items()]
    taken = {e.name.lower() for e in official}
    local = [Entry(name, data) for name, data in load_local_manifest()["models"].items() if name.lower() not in taken]
    return official + local


def find_entry(name: str) -> Entry | None:
    """The entry called `name` or having it as an alias (case-insensitive)."""
    wanted = name.strip().lower()
    for entry in entries():
        if entry.name.lower() == wanted or wanted in (a.lower() for a in entry.aliases):
            return entry
    return None


def get_entry(name: str) -> Entry:
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in entries())
        raise WeightsNotFoundError(f"{name}: not a known model name (known: {known})")
    return entry


def resolve(name: str) -> dict[str, Path]:
    """role -> local path for a manifest name; raises WeightsNotFoundError with the way to get the files."""
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in entries())
        raise WeightsNotFoundError(f"{name}: neither a file nor a known model name (known: {known})")
    found = entry.local_files()
    missing = [spec["filename"] for spec in entry.files if spec.get("role", "weights") not in found]
    if missing and entry.local:
        raise WeightsNotFoundError(
            f"{entry.name}: {', '.join(missing)} missing from {entry.folder}; import it again with "
            f"`irtool weights import FILE --name {entry.name}`"
        )
    if missing:
        raise WeightsNotFoundError(
            f"{entry.name}: not downloaded yet ({', '.join(missing)} missing from {entry.folder}); "
            f"run `irtool weights fetch {entry.name}` (or by hand: {manual_steps(entry)})"
        )
    return found


# --------------------------------------------------------------------------------------------------------------------
# Status (what `irtool weights list` shows)


@dataclass(frozen=True)
class EntryStatus:
    name: str
    aliases: list[str]
    arch: str
    variant: str | None
    setting: str | None
    local: bool
    #: "cached" (fetched files), "imported" (safetensors copies), "built-in" (shipped in the package), "partial"
    #: (some roles missing), "missing"
    status: str
    #: bytes on disk when present, else the manifest's size (approximate when `size_is_approx`), else None
    size: int | None
    size_is_approx: bool
    files: dict[str, str]  #: role -> path of each present file
    partial_bytes: int  #: bytes of unfinished downloads waiting to be resumed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_status(entry: Entry) -> EntryStatus:
    found = entry.local_files()
    if not found:
        status = "missing"
    elif len(found) < len(entry.files):
        status = "partial"
    elif found == entry.packaged_files():
        status = "built-in"
    elif any(path.name == f"{role}.safetensors" for role, path in found.items()):
        status = "imported"
    else:
        status = "cached"
    approx = False
    if found and len(found) == len(entry.files):
        size: int | None = sum(p.stat().st_size for p in found.values())
    elif all(spec.get("size") for spec in entry.files):
        size = sum(spec["size"] for spec in entry.files)
    elif all(spec.get("size") or spec.get("approx_size") for spec in entry.files):
        size, approx = sum(spec.get("size") or spec["approx_size"] for spec in entry.files), True
    else:
        size = None
    parts = entry.downloads.glob("*.part") if entry.downloads.is_dir() else []
    return EntryStatus(
        name=entry.name,
        aliases=entry.aliases,
        arch=entry.arch,
        variant=entry.variant,
        setting=entry.setting,
        local=entry.local,
        status=status,
        size=size,
        size_is_approx=approx,
        files={role: str(path) for role, path in found.items()},
        partial_bytes=sum(p.stat().st_size for p in parts),
    )


def statuses() -> list[EntryStatus]:
    return [entry_status(entry) for entry in entries()]


def describe(name: str) -> dict[str, Any]:
    """Everything known about one entry: its manifest data, its status and what the cache recorded."""
    entry = get_entry(name)
    return {"name": entry.name, **entry.data, "status": entry_status(entry).to_dict(), "state": entry.state()}


# --------------------------------------------------------------------------------------------------------------------
# Recording what the cache holds


def manual_steps(entry: Entry, specs: Sequence[Mapping[str, Any]] | None = None) -> str:
    """How to get files by hand, one clause per file ending in its import command (default: every file of the
    entry not on this machine yet; LoRA-IR's network and router are two files, both named)."""
    if specs is None:
        present = entry.local_files()
        specs = [spec for spec in entry.files if spec.get("role", "weights") not in present] or entry.files
    repo = (entry.data.get("source") or {}).get("repo")
    steps = []
    for spec in specs:
        role_option = f" --role {spec.get('role', 'weights')}" if len(entry.files) > 1 else ""
        command = f"`irtool weights import {spec['filename']} --name {entry.name}{role_option}`"
        if spec.get("drive_folder"):
            get = (
                f"download {spec.get('drive_path') or spec['filename']} from the Google Drive folder "
                f"{spec['drive_folder']} in a browser"
            )
        elif spec.get("url") or spec.get("drive_id"):
            get = f"download {spec.get('url') or _drive_file_link(spec['drive_id'])} yourself"
        else:
            get = f"get {spec['filename']}{' from ' + repo if repo else ''}"
        steps.append(f"{get}, then run {command}")
    return "; ".join(steps)


def _drive_file_link(drive_id: str) -> str:
    return f"https://drive.google.com/uc?id={drive_id}"


def source_url(entry: Entry, spec: Mapping[str, Any], urls: Mapping[str, str] | None = None) -> str:
    """Where to download one file from: an explicit URL for its role, else $IRTOOL_WEIGHTS_MIRROR/<name>/<filename>,
    else the manifest's url, else its Google Drive file id, else its Google Drive folder (the file is then found in
    the folder by its `drive_path`). Raises WeightsNotFoundError with the manual steps."""
    role = spec.get("role", "weights")
    if urls and role in urls:
        return urls[role]
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.name}/{spec['filename']}"
    if spec.get("url"):
        return spec["url"]
    if spec.get("drive_id"):
        return _drive_file_link(spec["drive_id"])
    if spec.get("drive_folder"):
        return spec["drive_folder"]
    raise WeightsNotFoundError(f"{entry.name}: no direct download link is published; {manual_steps(entry, [spec])}")


def url_overrides(name: str, values: Sequence[str]) -> dict[str, str]:
    """`--url` values -> {role: url}: `URL` for a one-file entry, `ROLE=URL` for any."""
    entry = get_entry(name)
    urls: dict[str, str] = {}
    for value in values:
        role, sep, rest = value.partition("=")
        if sep and role in entry.roles:
            urls[role] = rest
        elif len(entry.files) == 1:
            urls[entry.roles[0]] = value
        else:
            raise IrtoolError(
                f"--url {value}: {entry.name} has {len(entry.files)} files; write --url ROLE=URL "
                f"with ROLE one of {', '.join(entry.roles)}"
            )
    for url in urls.values():
        if not url.lower().startswith(("http://", "https://")):
            raise IrtoolError(
                f"--url {url}: only http:// and https:// URLs can be fetched; for a file on disk use "
                f"`irtool weights import {url} --name {entry.name}`"
            )
    return urls


# --------------------------------------------------------------------------------------------------------------------
# The default model


#: training settings, best everyday default first: AIO5 covers noise, rain, haze, blur and low light; AIO3 noise, rain
#: and haze; CDD11 weather (low light, haze, rain, snow and their mixtures) but no noise
DEFAULT_SETTINGS = ("AIO5", "AIO3", "CDD11")
#: networks whose router names the degradation (what `irtool restore` reports): a default model is one of these
#: before any network without routing (AdaIR, BioIR), whatever its setting
ROUTING_ARCHS = ("moce_ir", "lora_ir")


def _variant_is_small(entry: Entry) -> bool:
    return str(entry.data.get("variant", "")).upper().endswith("_S")


def rank_entries(entries: Iterable[Entry]) -> list[Entry]:
    """Official checkpoints, best default first: networks that route (`ROUTING_ARCHS`) first, then by setting
    (`DEFAULT_SETTINGS` order, others after), then the full model before the small one, then manifest order. The user's own (local) entries and the built-in model (which
    `default_source` takes first when it is the manifest's default) are left out."""
    listed = [e for e in entries if not e.local and not e.built_in]
    order = {name: i for i, name in enumerate(DEFAULT_SETTINGS)}

    def key(e: Entry) -> tuple[bool, int, bool, int]:
        setting = order.get(str(e.data.get("setting", "")).upper(), len(order))
        return e.arch not in ROUTING_ARCHS, setting, _variant_is_small(e), listed.index(e)

    return sorted(listed, key=key)


def default_source(buildable: Container[str]) -> tuple[Path, Path | None, str]:
    """(weights file, router file or None, how it was chosen) when neither --model nor --weights is given.

    1. The manifest's `default` entry, when its files are here (shipped inside the package, or in the cache).
    2. The best official checkpoint already in the cache (see `rank_entries`: AIO5, AIO3, CDD11; full before S).
    3. Otherwise WeightsNotFoundError with the exact commands to get weights.
    """

    manifest = load_manifest()
    default = manifest.get("default")
    if isinstance(default, str) and default:
        entry = find_entry(default)
        if entry is not None:
            files = entry.local_files()
            if all(spec.get("role", "weights") in files for spec in entry.files):
                return (
                    files.get("weights") or files.get("ir") or next(iter(files.values())),
                    files.get("router"),
                    f"the default model {entry.name}",
                )
    ranked = rank_entries(entries())
    for entry in ranked:
        if entry.arch not in buildable:
            continue
        files = entry.local_files()
        if files and all(spec.get("role", "weights") in files for spec in entry.files):
            main = files.get("weights") or files.get("ir") or next(iter(files.values()))
            return main, files.get("router"), f"{entry.name} (the best downloaded checkpoint)"
    best = next((e for e in ranked if e.arch in buildable), None) or ranked[0]
    hint = f" (or {manual_steps(best)})" if best.files else ""
    raise WeightsNotFoundError(
        f"no model given and no weights downloaded: run `irtool weights fetch {best.name}`{hint}, "
        "or pass --weights FILE or --model NAME"
    )
