"""Planning a restore run, without torch: the options, and inputs (files, folders, globs) expanded into jobs.

`irtool restore --dry-run` and `irtool degrade` use this module alone, so they start instantly; the engine
(irtool.restoration.engine, which re-exports these names) runs the jobs.

Imports the standard library and irtool.images.files only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..devices.policy import check_precision
from ..errors import IrtoolError, UsageError
from ..images import files as io
from ..images import safe_paths

#: containers irtool.restoration.video restores: kept here so planning needs neither PyAV nor the video modules
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
#: what a folder walk or a glob picks up: images, and videos (restored by irtool.restoration.video)
INPUT_SUFFIXES = io.IMAGE_SUFFIXES | VIDEO_SUFFIXES


@dataclass(frozen=True)
class RestoreOptions:
    """Everything `irtool restore` can be told. Defaults are the CLI's defaults."""

    model: str | None = None  #: manifest name (or a checkpoint path)
    weights: str | None = None  #: checkpoint file or folder
    router: str | None = None  #: LoRA-IR's second file, passed through to load_model
    config: dict[str, Any] | None = None  #: config fields the weights cannot show (load_model's `config`)
    router_config: dict[str, Any] | None = None  #: the same for LoRA-IR's router (load_model's `router_config`)
    calibration: str | None = None  #: routing calibration file (default: beside the weights)
    trust: bool = False  #: allow checkpoints that need arbitrary pickled objects
    device: str = "auto"  #: auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  #: auto, fp32, bf16, fp16
    tile: int = 0  #: tile side in px; 0 = whole images (tiles only after out-of-memory)
    tile_overlap: int = 32
    route_per_tile: bool = False  #: let every tile route itself instead of sharing the whole image's routing
    route_size: int = 512  #: longer side of the downscaled copy that tiled images are routed on
    batch_size: int = 1  #: same-size images (and tiles) per forward pass
    format: str | None = None  #: output format; None keeps the input's
    suffix: str = ""  #: appended to output file stems
    quality: int = 95  #: JPEG / WebP quality
    overwrite: bool = False
    skip_existing: bool = False
    max_megapixels: float | None = (
        None  #: refuse larger images; None: from this machine's memory (irtool.images.memory)
    )
    workers: int = 2  #: decoding and encoding threads
    #: CPU threads for the model (0: torch's default, all cores unless OMP_NUM_THREADS says less), shared out as
    #: independent model workers (see irtool.devices.speed.cpu_split)
    threads: int = 0

    def check(self) -> None:
        check_precision(self.precision)
        if (
            min(self.tile, self.tile_overlap, self.route_size, self.threads) < 0
            or min(self.batch_size, self.workers) < 1
        ):
            raise IrtoolError(
                "--tile, --tile-overlap, --route-size and --threads must be >= 0; --batch-size and --workers >= 1"
            )
        if self.tile and self.tile < 16:
            raise IrtoolError(f"--tile {self.tile}: too small (use 0 for whole images, or at least 16)")
        if self.max_megapixels is not None and not self.max_megapixels > 0:
            raise IrtoolError(f"--max-megapixels {self.max_megapixels}: must be above 0")
        if self.overwrite and self.skip_existing:
            raise IrtoolError("--overwrite and --skip-existing contradict each other; pick one")
        if not 1 <= self.quality <= 100:
            raise IrtoolError(f"--quality {self.quality}: between 1 and 100")
        if any(sep in self.suffix for sep in "/\\"):
            raise IrtoolError(f"--suffix {self.suffix!r}: must not contain a path separator")
        io.normalize_format(self.format)


@dataclass(frozen=True)
class Job:
    """One input and where its result goes. `skip` or `error` set means it will not run."""

    source: str  #: the input as the user named it (file, or the folder/glob it came from)
    src: Path | None
    dst: Path | None
    skip: str | None = None
    error: str | None = None
    exists: bool = False  #: skipped because the output exists and neither --skip-existing nor --overwrite was given


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _glob_base(pattern: str) -> Path:
    """The leading part of a glob pattern without wildcards: outputs mirror the tree below it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts[:-1]:
        if _is_glob(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _walk(folder: Path, exclude: Path | None) -> tuple[list[Path], list[str]]:
    """Image files below `folder`, sorted, skipping hidden files and folders and the output folder, never following
    a loop; and the folders that could not be listed."""
    return safe_paths.walk_files(folder, lambda name: Path(name).suffix.lower() in INPUT_SUFFIXES, exclude)


def output_path(src: Path, relative_dir: Path, out_dir: Path, options: RestoreOptions) -> Path:
    """`out_dir/<relative_dir>/<stem><suffix><ext>`: the input's extension, or the one of `--format`."""
    fmt = io.normalize_format(options.format)
    if src.suffix.lower() in VIDEO_SUFFIXES:  # --format is for images; a video keeps its container
        ext = src.suffix
    elif fmt is not None:
        ext = io.EXTENSIONS[fmt]
    elif io.format_from_suffix(src.suffix):
        ext = src.suffix
    else:
        ext = ".png"  # formats irtool reads but does not write
    return out_dir / relative_dir / f"{src.stem}{options.suffix}{ext}"


def expand_inputs(
    inputs: Sequence[str | Path], exclude: Path | None = None
) -> tuple[list[tuple[str, Path, Path]], list[Job]]:
    """Files, folders (recursively) and globs -> (source, image file, folder relative to the input's root) in a
    stable order, and a failed Job for each input that names nothing and each path that cannot be used (a special
    file, a broken or looping link, an unreadable folder). `exclude`: a folder not to descend into.

    Nothing is opened: types come from stat, links to folders are not descended, no file is listed twice."""
    found: list[tuple[str, Path, Path]] = []
    failed: list[Job] = []
    seen: set[str] = set()
    # One folder: its tree goes straight into the output folder. Several inputs: each folder keeps its own name
    # (as `cp -r a b dest/` does), so same-named files in different folders do not collide.
    nest = len(inputs) > 1

    def add(source: str, file: Path, rel: Path) -> None:
        key = os.path.normpath(os.path.abspath(file))
        if key in seen:  # e.g. 'shoot/**/*' matches a folder and the files in it
            return
        seen.add(key)
        problem = safe_paths.file_problem(file)
        if problem:
            failed.append(Job(source, file, None, error=problem))
        else:
            found.append((source, file, rel))

    for raw in inputs:
        text = str(raw)
        path = Path(text).expanduser()
        seen.clear()  # within one input; two inputs naming one file give two outputs, as before
        if path.is_dir():
            files, problems = _walk(path, exclude)
            failed += [Job(text, None, None, error=p) for p in problems]
            if not files and not problems:
                failed.append(
                    Job(
                        text,
                        None,
                        None,
                        error=f"{text}: no images (png, jpg, webp, tiff, bmp) or videos (mp4, mov, mkv, webm, avi) in this folder",
                    )
                )
            top = Path(safe_paths.real(path).name) if nest else Path(".")
            for f in files:
                add(text, f, top / f.parent.relative_to(path))
        elif os.path.lexists(path):
            add(text, path, Path("."))
        elif _is_glob(text):
            pattern = os.path.expanduser(text)
            base = _glob_base(pattern)
            before = len(found) + len(failed)
            for m in safe_paths.glob_paths(pattern):
                if os.path.isdir(m) and not os.path.islink(m):
                    files, problems = _walk(m, exclude)
                    failed += [Job(text, None, None, error=p) for p in problems]
                    for f in files:
                        add(text, f, f.parent.relative_to(base) if f.is_relative_to(base) else Path("."))
                elif m.suffix.lower() in INPUT_SUFFIXES and not m.name.startswith("."):
                    add(text, m, m.parent.relative_to(base) if m.is_relative_to(base) else Path("."))
            if len(found) + len(failed) == before:
                failed.append(Job(text, None, None, error=f"{text}: matches no images"))
        else:
            failed.append(Job(text, None, None, error=f"{text}: no such file or folder"))
    return found, failed


def _single_file_output(inputs: Sequence[str | Path], out: Path) -> bool:
    """`irtool restore photo.jpg fixed.jpg`: one input file and an output that names an image file, not a folder."""
    return (
        len(inputs) == 1
        and os.path.isfile(Path(str(inputs[0])).expanduser())
        and io.format_from_suffix(out.suffix) is not None
        and not out.is_dir()
    )


def _unwritable(folder: Path) -> str | None:
    """Why no output can be written into `folder`: it, or the nearest part of it that exists, is not a folder or not
    writable. None when it can be (or made and then written). Found before any image is restored."""
    existing = folder.absolute()
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder}: cannot be made, {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == folder.absolute() else ", where it would be made,"
        return f"{folder}: cannot write there ({existing}{made} is not writable); choose another output folder"
    return None


def plan(inputs: Sequence[str | Path], out_dir: str | Path, options: RestoreOptions | None = None) -> list[Job]:
    """Expand inputs (files, folders, globs) into jobs, in a stable order, applying the output rules:

    - a file goes to `out_dir/name`; a folder's images to `out_dir/<path below the folder>` (with several inputs,
      `out_dir/<folder name>/<path below it>`); a glob's matches to `out_dir/<path below the glob's fixed part>`;
      the output folder itself is never walked as input; one input file with an output named like an image file
      (`photo.jpg fixed.png`) is written to that file;
    - an input is never an output: a job whose output would be its own input is refused;
    - an existing output is skipped with `skip_existing`, replaced with `overwrite`, else left as it is (status
      "exists", not a failure);
    - two inputs that would write the same output: the second is refused;
    - special files, broken or looping links and unreadable folders are refused one by one (see images/safe_paths.py).
    """
    options = options or RestoreOptions()
    out_dir = Path(out_dir)
    single = _single_file_output(inputs, out_dir)
    if not single and out_dir.exists() and not out_dir.is_dir():
        raise IrtoolError(f"{out_dir}: exists and is not a folder")
    if not single and len(inputs) > 1 and io.format_from_suffix(out_dir.suffix) and not out_dir.exists():
        raise IrtoolError(
            f"{out_dir}: several inputs need an output folder, and this names an image file; give a folder (e.g. out/)"
        )
    problem = _unwritable(out_dir.parent if single else out_dir)
    if problem:
        raise IrtoolError(problem)
    found, jobs = expand_inputs(inputs, safe_paths.real(out_dir.parent if single else out_dir))
    claimed: dict[Path, Path] = {}
    for source, src, rel in found:
        dst = out_dir if single else output_path(src, rel, out_dir, options)
        key = safe_paths.real(dst)
        if safe_paths.name_too_long(dst):
            jobs.append(
                Job(
                    source,
                    src,
                    None,
                    error=f"{src}: the output name {dst.name[:40]}... is longer than the {safe_paths.NAME_MAX} bytes a file name can hold",
                )
            )
        elif key == safe_paths.real(src) or (dst.exists() and os.path.samefile(dst, src)):  # also through links
            jobs.append(
                Job(
                    source,
                    src,
                    dst,
                    error=f"{src}: the output would overwrite the input; choose another output folder or a --suffix",
                )
            )
        elif key in claimed:
            jobs.append(Job(source, src, dst, error=f"{src}: its output {dst} is already the output of {claimed[key]}"))
        elif os.path.lexists(dst) and options.skip_existing:
            claimed[key] = src
            jobs.append(Job(source, src, dst, skip=f"{dst} exists"))
        elif os.path.lexists(dst) and not options.overwrite:
            claimed[key] = src
            jobs.append(Job(source, src, dst, skip=f"{dst} exists", exists=True))
        else:
            claimed[key] = src
            jobs.append(Job(source, src, dst))
    return jobs


def none_readable(jobs: Sequence[Job]) -> list[Job] | None:
    """None when some job has an image that may be read, so a model is needed (headers are looked at only up to the
    first such image); else `jobs` with each one that would have run failed with the line saying why its file cannot
    be read (`io.probe_image`: a header check, no decoding). Videos are left to their decoder: any runnable video
    gives None."""
    out: list[Job] = []
    for job in jobs:
        if job.error or job.skip or job.src is None:
            out.append(job)
            continue
        problem = None if job.src.suffix.lower() in VIDEO_SUFFIXES else io.probe_image(job.src)
        if problem is None:
            return None
        out.append(replace(job, error=problem))
    return out


_FLAG_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def split_restore_paths(paths: Sequence[str]) -> tuple[list[str], str]:
    """`irtool restore INPUT... OUTPUT`: (inputs, output), or a usage error that says what is missing."""
    if len(paths) < 2:
        shown = f" {paths[0]}" if paths else " photo.jpg"
        raise UsageError(
            f"missing the output folder: irtool restore{shown} OUTPUT_DIR (e.g. irtool restore{shown} out/)"
        )
    for word in paths:
        if word.lower() in _FLAG_WORDS and not os.path.lexists(word):
            raise UsageError(f"{word!r}: flags such as --skip-existing take no value; leave out {word!r}")
    return list(paths[:-1]), paths[-1]


#: said once per run when outputs were left as they were
EXISTS_HINT = "pass --skip-existing to skip them quietly, or --overwrite to replace them"


@dataclass
class RestoreReport:
    """What happened to one input. `status` is "ok", "skipped", "exists" (its output was already there and was left
    as it is) or "failed" (then `error` says why)."""

    input: str
    output: str | None = None
    status: str = "ok"
    width: int | None = None
    height: int | None = None
    degradation: str | None = None  #: the router's reading, e.g. "rain"; "unknown" without a calibration
    confidence: float | None = None
    experts: list[list[int]] | None = None  #: per MoCE layer, the chosen experts (top-k)
    gates: list[list[float]] | None = None  #: their gates
    routing: str | None = None  #: "whole", "downscaled" (shared by tiles) or "per-tile"
    tiles: int = 0
    tile_size: list[int] | None = None
    precision: str | None = None
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def megapixels(self) -> float:
        return (self.width or 0) * (self.height or 0) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "size": [self.width, self.height] if self.width is not None else None,
            "degradation": self.degradation,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "experts": self.experts,
            "gates": None if self.gates is None else [[round(g, 4) for g in layer] for layer in self.gates],
            "routing": self.routing,
            "tiles": self.tiles,
            "tile_size": self.tile_size,
            "precision": self.precision,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "warnings": self.warnings,
            "error": self.error,
        }


def report_unrunnable(job: Job) -> RestoreReport:
    """The report of a job that planning refused (`error`) or skipped (`skip`)."""
    if job.error:
        return RestoreReport(
            input=str(job.src or job.source), output=str(job.dst) if job.dst else None, status="failed", error=job.error
        )
    status = "exists" if job.exists else "skipped"
    return RestoreReport(
        input=str(job.src), output=str(job.dst), status=status, warnings=[job.skip] if job.skip else []
    )
