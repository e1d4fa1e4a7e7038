"""The local weights store: fetch, import, convert, verify and remove checkpoints in the cache.

Reads the catalogue (`irtool.weights.catalogue`, which never imports torch) and checks files through the loader
(`irtool.loading`, torch, imported inside the functions so `irtool weights fetch --help` stays instant). Dependencies
run one way: catalogue <- loading <- store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    IrtoolError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from . import catalogue
from .catalogue import (
    _GENERIC_STEMS,
    _NAME,
    CHECKPOINT_SUFFIXES,
    LOCAL_MANIFEST_NAME,
    ROLES,
    STATE_NAME,
    Entry,
    FileProgress,
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _record(entry: Entry, role: str, record: dict[str, Any] | None) -> None:
    """Set (or, with None, forget) what state.json says about the file of `role`."""
    files = entry.state()
    if record is None:
        files.pop(role, None)
    else:
        files[role] = record
    _write_json(entry.folder / STATE_NAME, {"schema_version": 1, "files": files})


# --------------------------------------------------------------------------------------------------------------------
# Fetch


@dataclass(frozen=True)
class Fetched:
    name: str
    role: str
    path: Path
    sha256: str | None
    size: int
    url: str | None
    resumed_from: int = 0
    already: bool = False  #: the file was in the cache already; nothing was downloaded
    checked: str = ""  #: how the file was checked (checksum, structure)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def fetch(
    name: str,
    *,
    urls: Mapping[str, str] | None = None,
    force: bool = False,
    progress: FileProgress | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    trust: bool = False,
) -> list[Fetched]:
    """Download the files of entry `name` into the cache, verify them and record their sha256.

    urls: {role: url} to download from instead of the manifest's (e.g. a mirror); see `source_url`.
    force: download again even when the file is cached (an imported copy of that role is then dropped).
    trust: allow pickled objects beyond plain tensors when checking a file (runs code from it).
    A file with a known sha256 must match it; one without is loaded strictly and must be the entry's architecture
    and variant (this needs torch). What fails a check is deleted; an interrupted download is kept and resumed.
    """
    entry = catalogue.get_entry(name)
    if entry.local:
        raise WeightsNotFoundError(f"{entry.name}: your own import, not a published checkpoint; nothing to fetch")
    present = entry.local_files()
    jobs = []
    done: list[Fetched] = []
    for spec in entry.files:
        role = spec.get("role", "weights")
        if role in present and not force:
            path = present[role]
            done.append(
                Fetched(
                    entry.name,
                    role,
                    path,
                    (entry.state().get(role) or {}).get("sha256"),
                    path.stat().st_size,
                    None,
                    already=True,
                )
            )
            continue
        jobs.append((spec, catalogue.source_url(entry, spec, urls)))  # every URL is known before anything is downloaded
    for spec, url in jobs:
        done.append(_fetch_file(entry, spec, url, progress, timeout, retries, trust))
    return done


def _fetch_file(
    entry: Entry,
    spec: Mapping[str, Any],
    url: str,
    progress: FileProgress | None,
    timeout: float,
    retries: int,
    trust: bool,
) -> Fetched:
    role = spec.get("role", "weights")
    filename = spec["filename"]
    staged = entry.downloads / filename
    report = (lambda done, total: progress(filename, done, total)) if progress else None
    from .drive import download_from_drive, is_drive_url

    try:
        if is_drive_url(url):
            got = download_from_drive(url, staged, path=spec.get("drive_path"), sha256=spec.get("sha256"),
                                      size=spec.get("size"), progress=report, timeout=timeout, retries=retries)  # fmt: skip
        else:
            from .download import download

            got = download(url, staged, sha256=spec.get("sha256"), size=spec.get("size"), progress=report,
                           timeout=timeout, retries=retries)  # fmt: skip
        if spec.get("sha256"):
            checked = "sha256 matches the manifest"
        else:
            try:
                checked = _check_against_entry(staged, entry, spec, trust)
            except UnsafeCheckpointError:
                # Not necessarily wrong, but it cannot be checked without running its pickled code: keep the download
                # out of the cache and say how to take it in.
                raise UnsafeCheckpointError(
                    f"{entry.name}: the downloaded file needs pickled objects beyond plain tensors to load, so it was "
                    f"not checked; it is kept at {staged}. If you trust {url}, run `irtool weights import {staged} "
                    f"--name {entry.name} --trust-checkpoint`"
                ) from None
            except IrtoolError as exc:
                staged.unlink(missing_ok=True)
                raise CheckpointError(
                    f"{entry.name}: the file from {url} is not this checkpoint ({exc}); nothing was kept"
                ) from None
        entry.folder.mkdir(parents=True, exist_ok=True)
        dest = entry.folder / filename
        os.replace(staged, dest)
    except ChecksumError as exc:
        raise ChecksumError(f"{entry.name}: {exc}") from None
    except DownloadError as exc:
        raise DownloadError(f"{entry.name}: {exc}. To do it by hand: {catalogue.manual_steps(entry)}") from None
    finally:
        _prune(entry.downloads)  # gone unless a partial download waits there
        _prune(entry.downloads.parent)
    copy = entry.folder / f"{role}.safetensors"
    if copy.is_file() and copy != dest:
        copy.unlink()  # an imported copy of an older file would shadow the fresh download
    _record(
        entry,
        role,
        {
            "file": filename,
            "how": "fetched",
            "sha256": got.sha256,
            "size": got.size,
            "source": url,
            "source_sha256": got.sha256,
            "time": _now(),
            "arch": spec.get("arch", entry.arch),
            "variant": entry.variant,
        },
    )
    return Fetched(entry.name, role, dest, got.sha256, got.size, got.url, got.resumed_from, checked=checked)


def _prune(folder: Path) -> None:
    """Remove `folder` if it is empty."""
    try:
        folder.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------------------------
# Reading checkpoints (torch, through irtool.loading)


@dataclass
class Checked:
    """A checkpoint read and loaded strictly."""

    path: Path
    arch: str
    title: str
    config: Any  #: the network's config object (has to_dict())
    variant: str | None  #: the released variant its shapes equal, if any
    parameters: int
    state_dict: dict = field(repr=False)


def known_archs() -> dict[str, str]:
    """ARCHS key -> title of the networks this irtool can build (imports torch)."""
    from ..archs import ARCHS

    return {name: spec.title for name, spec in ARCHS.items()}


def check_checkpoint(path: str | Path, *, trust: bool = False, config: Mapping[str, Any] | None = None) -> Checked:
    """Read a checkpoint safely, detect its architecture and config (with the caller's stated `config` fields), and
    load it strictly (raises CheckpointError)."""
    from .. import loading
    from ..archs import spec_of

    path = Path(path)
    sd, metadata = loading.read_state_dict(path, trust=trust)
    model = loading.build_model(sd, metadata, path, config)
    spec = spec_of(model)
    # a released variant only if the whole config is one (a stated top_k=2 on MoCE_IR's shapes is not MoCE_IR)
    variant = next((name for name, c in spec.variants.items() if c == model.config), None)
    return Checked(path, spec.name, spec.title, model.config, variant, sum(p.numel() for p in model.parameters()), sd)


def _expect(checked: Checked, arch: str, variant: str | None) -> None:
    """Raise CheckpointError unless `checked` is architecture `arch` in released config `variant` (when given and
    known to that architecture)."""
    from ..archs import ARCHS

    if checked.arch != arch:
        want = ARCHS[arch].title if arch in ARCHS else arch
        raise CheckpointError(f"{checked.path}: a {checked.title} checkpoint, not {want}")
    variants = ARCHS[arch].variants
    if variant is None or variant not in variants or checked.variant == variant:
        return
    got = ARCHS[arch].infer_config(checked.state_dict).to_dict()
    want_config = variants[variant].to_dict()
    diffs = [f"{k}={got[k]} instead of {v}" for k, v in want_config.items() if got.get(k) != v]
    what = checked.variant or "not a released config"
    raise CheckpointError(f"{checked.path}: {checked.title} {what} ({', '.join(diffs[:4])}), not {variant}")


def _check_against_entry(path: Path, entry: Entry, spec: Mapping[str, Any], trust: bool = False) -> str:
    """Load `path` strictly as the file `spec` of `entry`; the sentence saying what was checked. Archs this irtool
    cannot build yet are not loaded (the sentence says so)."""
    arch = spec.get("arch", entry.arch)
    if arch not in known_archs():
        return f"not loaded: this irtool has no {arch} network"
    checked = check_checkpoint(path, trust=trust)
    _expect(checked, arch, entry.variant)
    return f"loads strictly as {checked.title} {checked.variant or ''}".rstrip()


# --------------------------------------------------------------------------------------------------------------------
# Import and convert


@dataclass(frozen=True)
class Imported:
    name: str
    role: str
    arch: str
    variant: str | None
    config: dict[str, Any]
    path: Path  #: the safetensors copy in the cache (or the converted file)
    source: Path
    source_sha256: str
    sha256: str
    size: int
    local: bool
    already: bool = False  #: this very file had been imported before; nothing was written

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "source": str(self.source)}


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file a path names: the file itself, or `last.ckpt` / the only checkpoint in a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "last.ckpt").is_file():
            return path / "last.ckpt"
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            what = "no checkpoint file" if not found else f"{len(found)} checkpoint files"
            raise CheckpointError(f"{path}: a folder with {what}; name the file")
        return found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return path


def derive_name(path: str | Path) -> str:
    """A local entry name for a checkpoint file: its stem, or its folder's name for generic stems (`last.ckpt`)."""
    path = Path(path)
    stem = path.stem
    generic = stem.lower() in _GENERIC_STEMS or stem.lower().startswith(("epoch=", "step="))
    base = path.resolve().parent.name if generic else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:100]


def check_name(name: str) -> None:
    """Raise unless `name` can name a local entry (and its cache folder)."""
    if not _NAME.match(name) or name == LOCAL_MANIFEST_NAME:
        raise IrtoolError(
            f"--name {name}: use letters, digits, '.', '_' and '-' (at most 100, starting with a letter or digit)"
        )
    if Path(name).suffix.lower() in CHECKPOINT_SUFFIXES:
        raise IrtoolError(
            f"--name {name}: a name must not end like a checkpoint file ({Path(name).suffix}), or it would be read as a path"
        )


def _role_for(arch: str) -> tuple[str, str]:
    """(role, entry arch) that the manifest uses for a file of architecture `arch`: ("weights", "moce_ir"),
    ("ir", "lora_ir"), ("router", "lora_ir"); ("weights", arch) for an architecture no entry has."""
    for data in catalogue.load_manifest()["models"].values():
        for spec in data["files"]:
            if spec.get("arch", data["arch"]) == arch:
                return spec.get("role", "weights"), data["arch"]
    return "weights", arch


def _metadata(
    checked: Checked, config: Any, *, name: str, role: str, source: Path, source_sha256: str
) -> dict[str, str]:
    metadata = {
        "irtool.arch": checked.arch,
        "irtool.config": json.dumps(config.to_dict()),
        "irtool.name": name,
        "irtool.role": role,
        "irtool.source_sha256": source_sha256,
        "irtool.source_file": source.name,
    }
    if checked.variant:
        metadata["irtool.variant"] = checked.variant
    return metadata


def _write_safetensors(sd: Mapping[str, Any], metadata: dict[str, str], out: Path) -> None:
    """Write tensors and metadata to `out` atomically; tensors sharing memory are copied apart (safetensors
    refuses shared storage)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for key, tensor in sd.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        tensors[key] = tensor
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_metadata(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _sort_metadata(path: Path) -> None:
    """Put a safetensors header's metadata in key order, so that one checkpoint always converts to the same bytes
    (safetensors writes it in hash-map order). The header keeps its length: only the order of its keys changes."""
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        metadata = header.pop("__metadata__", None)
        if not metadata:
            return
        text = json.dumps(
            {"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        if len(text) <= length:  # always equal in practice; otherwise leave the file as written
            f.seek(8)
            f.write(text + b" " * (length - len(text)))


def _import_target(
    entry: Entry | None, checked: Checked, role: str | None, src: Path, source_sha256: str
) -> tuple[str, str | None]:
    """(role, expected variant) of an import into `entry`; raises when the file is not what the entry holds."""
    from ..archs import ARCHS

    if role is not None and role not in ROLES:
        raise IrtoolError(f"--role {role}: one of {', '.join(ROLES)}")
    if entry is None or entry.local:
        return role or _role_for(checked.arch)[0], None
    specs = [s for s in entry.files if role is None or s.get("role", "weights") == role]
    if not specs:
        raise IrtoolError(f"--role {role}: {entry.name} has the roles {', '.join(entry.roles)}")
    matching = [s for s in specs if s.get("arch", entry.arch) == checked.arch]
    if not matching:
        titles = known_archs()
        wanted = " or ".join(
            f"{titles.get(s.get('arch', entry.arch), s.get('arch', entry.arch))} ({s.get('role', 'weights')})"
            for s in specs
        )
        raise CheckpointError(f"{src}: a {checked.title} checkpoint, but {entry.name} expects {wanted}")
    spec = matching[0]
    if spec.get("sha256") and source_sha256 != spec["sha256"]:
        raise ChecksumError(
            f"{src}: not the released {entry.name} file (sha256 {source_sha256}, the manifest says {spec['sha256']}); "
            "import it without --name to keep it as your own"
        )
    _expect(checked, checked.arch, entry.variant)
    variant = entry.variant if entry.variant in ARCHS[checked.arch].variants else None
    return spec.get("role", "weights"), variant


def import_checkpoint(
    path: str | Path,
    *,
    name: str | None = None,
    role: str | None = None,
    trust: bool = False,
    force: bool = False,
    config: Mapping[str, Any] | None = None,
) -> Imported:
    """Import a checkpoint into the cache as a safetensors copy, so that `load_model(name)` (and `--model NAME`)
    finds it.

    name: a manifest entry (name or alias): the file must be that entry's architecture and variant (and its sha256
        when the manifest knows it). Any other name makes (or adds to) a local entry. None: a local entry named
        after the file (`derive_name`).
    role: which file of a multi-file entry this is (LoRA-IR: ir, router); by default read off the architecture.
    trust: allow pickled objects beyond plain tensors in the source (runs code from the file).
    force: replace a different file imported or fetched under the same name and role.
    config: config fields the tensors cannot show (e.g. {"top_k": 2}, a router's {"num_heads": 3}); checked against
        the tensors and recorded in the copy's metadata, so later loads need not state them again.
    """
    from .download import sha256_file  # urllib is slow to import: only where a file is hashed

    src = checkpoint_file(path)
    entry, name = _import_entry(src, name)
    source_sha256 = sha256_file(src)
    checked = check_checkpoint(src, trust=trust, config=config)
    role, variant = _import_target(entry, checked, role, src, source_sha256)
    entry_name = entry.name if entry is not None else name
    copy = catalogue.cache_dir() / entry_name / f"{role}.safetensors"

    def imported(sha256: str, size: int, local: bool, already: bool = False) -> Imported:
        stored = checked.config  # as detected (a released variant's values) plus what the caller stated
        arch, shown = checked.arch, variant or checked.variant
        return Imported(entry_name, role, arch, shown, stored.to_dict(), copy, src, source_sha256, sha256, size, local,
                        already=already)  # fmt: skip

    if entry is not None and (present := entry.local_files().get(role)) is not None:
        record = entry.state().get(role) or {}
        previous = record.get("source_sha256") or sha256_file(present)
        if previous == source_sha256 and copy.is_file():
            return imported(record.get("sha256") or sha256_file(copy), copy.stat().st_size, entry.local, True)
        if previous != source_sha256 and not force:
            origin = record.get("source") or str(present)
            raise IrtoolError(
                f"{entry_name}: already holds a different {role} file (from {origin}); pass --force to replace it, "
                "or --name OTHER to import this one beside it"
            )
        if previous != source_sha256 and present != copy:
            present.unlink()  # the fetched original is another file now; keep the cache consistent
    metadata = _metadata(checked, checked.config, name=entry_name, role=role, source=src, source_sha256=source_sha256)
    _write_safetensors(checked.state_dict, metadata, copy)
    sha256, size = sha256_file(copy), copy.stat().st_size
    local = entry is None or entry.local
    record = {"file": copy.name, "how": "imported", "sha256": sha256, "size": size, "source": str(src.resolve()),
              "source_sha256": source_sha256, "time": _now(), "arch": checked.arch,
              "variant": variant or checked.variant}  # fmt: skip
    _record(entry if entry is not None else Entry(entry_name, {}), role, record)
    if local:
        _add_local(entry_name, role, checked, src, sha256, size)
    return imported(sha256, size, local)


def _import_entry(src: Path, name: str | None) -> tuple[Entry | None, str]:
    """The entry an import goes into (None: a new local one) and its name; a name made from the file must not be
    an official entry's (that import would have to match the release)."""
    if name is None:
        name = derive_name(src)
        if not name:
            raise IrtoolError(f"{src}: no name can be made from the file's name; pass --name NAME")
        entry = catalogue.find_entry(name)
        if entry is not None and not entry.local:
            raise IrtoolError(
                f"{src}: its name {name} is the official entry {entry.name}; pass --name {entry.name} to import it as "
                f"that checkpoint, or --name OTHER to keep it as your own"
            )
        return entry, name
    entry = catalogue.find_entry(name)
    if entry is None:
        check_name(name)
    return entry, name


def _add_local(name: str, role: str, checked: Checked, src: Path, sha256: str, size: int) -> None:
    """Record (or update) a local entry in the user's manifest."""
    manifest = catalogue.load_local_manifest()
    _, entry_arch = _role_for(checked.arch)
    entry = manifest["models"].get(name) or {
        "arch": entry_arch,
        "variant": None,
        "setting": None,
        "tasks": [],
        "classes": None,
        "files": [],
        "source": {"paper": None, "repo": None, "license": None},
        "reported": {},
        "local": True,
    }
    entry["files"] = [f for f in entry["files"] if f["role"] != role] + [
        {
            "role": role,
            "arch": checked.arch,
            "filename": f"{role}.safetensors",
            "url": None,
            "sha256": sha256,
            "size": size,
        }
    ]
    if checked.arch == entry_arch:
        entry["arch"] = entry_arch
        entry["variant"] = checked.variant
    entry["source"]["file"] = str(src.resolve())
    manifest["models"][name] = entry
    _write_json(catalogue.local_manifest_path(), manifest)


#: `convert --dtype` choices: floating-point tensors are stored in this precision (loading casts them back to the
#: model's dtype, so fp16 files halve the size at a rounding cost of ~1e-3 relative)
STORE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def convert(
    path: str | Path,
    out: str | Path,
    *,
    trust: bool = False,
    force: bool = False,
    dtype: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Imported:
    """Write a checkpoint as `out` (.safetensors) with its detected architecture and config in the metadata, after
    loading it strictly; the cache is not touched. The result loads without pickle, and without --trust-checkpoint.
    `dtype` (fp32, fp16, bf16) stores the floating-point tensors in that precision; None keeps them as they are.
    `config`: fields the tensors cannot show (as for `import_checkpoint`), recorded with the rest."""
    from .download import sha256_file  # urllib is slow to import: only where a file is hashed

    if dtype is not None and dtype not in STORE_DTYPES:
        raise IrtoolError(f"--dtype {dtype}: not one of {', '.join(STORE_DTYPES)}")
    src = checkpoint_file(path)
    out = Path(out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise IrtoolError(f"{out}: the output must be a .safetensors file")
    if out.exists() and out.resolve() == src.resolve():
        raise IrtoolError(f"{out}: is the input; choose another output file")
    if out.exists() and not force:
        raise IrtoolError(f"{out}: exists; pass --force to overwrite it")
    source_sha256 = sha256_file(src)
    checked = check_checkpoint(src, trust=trust, config=config)
    role, _ = _role_for(checked.arch)
    name = derive_name(src) or out.stem
    sd = checked.state_dict
    if dtype is not None:
        import torch

        target = getattr(torch, STORE_DTYPES[dtype])
        sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    _write_safetensors(
        sd, _metadata(checked, checked.config, name=name, role=role, source=src, source_sha256=source_sha256), out
    )
    return Imported(
        name,
        role,
        checked.arch,
        checked.variant,
        checked.config.to_dict(),
        out,
        src,
        source_sha256,
        sha256_file(out),
        out.stat().st_size,
        local=False,
    )


# --------------------------------------------------------------------------------------------------------------------
# Verify and remove


@dataclass(frozen=True)
class Verified:
    name: str
    role: str
    path: Path
    ok: bool
    sha256: str
    expected: str | None  #: the sha256 it was checked against (None: nothing to check against)
    against: str | None  #: "manifest" or "record" (state.json, written when the file was fetched or imported)
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def verify(name: str | None = None, *, trust: bool = False) -> list[Verified]:
    """Re-hash every cached file (of `name`, or of all entries) against the manifest's sha256 where it has one,
    else against the one recorded at fetch/import time, and load it strictly as the entry's architecture."""
    if name is not None:
        targets = [catalogue.get_entry(name)]
        if not targets[0].local_files():
            raise WeightsNotFoundError(f"{targets[0].name}: nothing in the cache to verify ({targets[0].folder})")
    else:
        targets = [e for e in catalogue.entries() if e.local_files()]
    results = []
    for entry in targets:
        state = entry.state()
        for role, path in entry.local_files().items():
            results.append(_verify_file(entry, role, path, state.get(role) or {}, trust))
    return results


def _verify_file(entry: Entry, role: str, path: Path, record: Mapping[str, Any], trust: bool) -> Verified:
    from .download import sha256_file  # urllib is slow to import: only where a file is hashed

    spec = entry.file_spec(role) or {}
    actual = sha256_file(path)
    is_original = path.name == spec.get("filename") and not entry.local
    if is_original and spec.get("sha256"):
        expected, against = spec["sha256"], "manifest"
    elif record.get("file") == path.name and record.get("sha256"):
        expected, against = record["sha256"], "record"
    else:
        expected, against = None, None
    problems = []
    if expected and actual != expected:
        problems.append(
            f"sha256 {actual} differs from the {against}'s {expected} (changed or damaged since "
            f"{record.get('time', 'it was stored')}; fetch or import it again)"
        )
    official_sha = spec.get("sha256") if not entry.local else None
    if official_sha and record.get("source_sha256") and record["source_sha256"] != official_sha:
        problems.append(f"imported from a file that is not the released one (sha256 {record['source_sha256']})")
    note = ""
    if not problems:
        try:
            note = _check_against_entry(path, entry, spec or {"arch": entry.arch}, trust)
        except IrtoolError as exc:
            problems.append(str(exc))
    if problems:
        return Verified(entry.name, role, path, False, actual, expected, against, "; ".join(problems))
    if expected:
        said = f"sha256 matches the {against}"
    else:
        said = "no checksum to compare with (placed by hand?); import it to record one"
    return Verified(entry.name, role, path, True, actual, expected, against, f"{said}; {note}")


@dataclass(frozen=True)
class Removed:
    name: str
    paths: list[Path]
    freed: int  #: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "paths": [str(p) for p in self.paths], "freed": self.freed}


def remove(name: str) -> Removed:
    """Delete an entry's files (fetched, imported, partial downloads) from the cache; a local entry is forgotten."""
    entry = catalogue.get_entry(name)
    paths = [p for p in (entry.folder, entry.downloads) if p.exists()]
    if not paths and entry.packaged_files():
        raise WeightsNotFoundError(f"{entry.name}: built into irtool, not in the cache; nothing to remove")
    if not paths and not entry.local:
        raise WeightsNotFoundError(f"{entry.name}: nothing in the cache ({entry.folder})")
    freed = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
    for path in paths:
        shutil.rmtree(path)
    _prune(entry.downloads.parent)
    if entry.local:
        manifest = catalogue.load_local_manifest()
        manifest["models"].pop(entry.name, None)
        _write_json(catalogue.local_manifest_path(), manifest)
    return Removed(entry.name, paths, freed)
