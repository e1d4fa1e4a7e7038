"""Planning a restore run, without torch: the options, and inputs (files, folders, globs) expanded into jobs.

`irtool restore --dry-run` and `irtool degrade` use this module alone, so they start instantly; the engine
(irtool.engine, which re-exports these names) runs the jobs.

Imports the standard library and irtool.io only.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import io
from .errors import IrtoolError
from .video import VIDEO_SUFFIXES

#: what a folder walk or a glob picks up: images, and videos (restored by irtool.video)
INPUT_SUFFIXES = io.IMAGE_SUFFIXES | VIDEO_SUFFIXES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    max_megapixels: float = io.DEFAULT_MAX_MEGAPIXELS
    workers: int = 2  #: decoding and encoding threads

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise IrtoolError(f"--precision {self.precision}: one of {', '.join(PRECISIONS)}")
        if self.tile < 0 or self.tile_overlap < 0 or self.batch_size < 1 or self.workers < 1 or self.route_size < 0:
            raise IrtoolError("--tile, --tile-overlap and --route-size must be >= 0; --batch-size and --workers >= 1")
        if self.tile and self.tile < 16:
            raise IrtoolError(f"--tile {self.tile}: too small (use 0 for whole images, or at least 16)")
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


def _walk(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files below `folder`, sorted, skipping hidden files and folders and the output folder."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude)
        )
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in INPUT_SUFFIXES:
                found.append(root_path / name)
    return found


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


def expand_inputs(inputs: Sequence[str | Path], exclude: Path | None = None) -> tuple[list[tuple[str, Path, Path]], list[Job]]:
    """Files, folders (recursively) and globs -> (source, image file, folder relative to the input's root) in a
    stable order, and a failed Job for each input that names nothing. `exclude`: a folder not to descend into."""
    found: list[tuple[str, Path, Path]] = []
    failed: list[Job] = []
    # One folder: its tree goes straight into the output folder. Several inputs: each folder keeps its own name
    # (as `cp -r a b dest/` does), so same-named files in different folders do not collide.
    nest = len(inputs) > 1
    for raw in inputs:
        text = str(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            files = _walk(path, exclude)
            if not files:
                failed.append(Job(text, None, None, error=f"{text}: no images (png, jpg, webp, tiff, bmp) or videos (mp4, mov, mkv, webm, avi) in this folder"))
            top = Path(path.resolve().name) if nest else Path(".")
            found += [(text, f, top / f.parent.relative_to(path)) for f in files]
        elif path.exists():
            found.append((text, path, Path(".")))
        elif _is_glob(text):
            base = _glob_base(os.path.expanduser(text))
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = []
            for m in matches:
                if m.is_dir():
                    files += [(f, f.parent.relative_to(base)) for f in _walk(m, exclude)]
                elif m.suffix.lower() in INPUT_SUFFIXES and not m.name.startswith("."):
                    files.append((m, m.parent.relative_to(base) if m.is_relative_to(base) else Path(".")))
            if not files:
                failed.append(Job(text, None, None, error=f"{text}: matches no images"))
            found += [(text, f, rel) for f, rel in files]
        else:
            failed.append(Job(text, None, None, error=f"{text}: no such file or folder"))
    return found, failed


def plan(inputs: Sequence[str | Path], out_dir: str | Path, options: RestoreOptions | None = None) -> list[Job]:
    """Expand inputs (files, folders, globs) into jobs, in a stable order, applying the output rules:

    - a file goes to `out_dir/name`; a folder's images to `out_dir/<path below the folder>` (with several inputs,
      `out_dir/<folder name>/<path below it>`); a glob's matches to `out_dir/<path below the glob's fixed part>`;
      the output folder itself is never walked as input;
    - an input is never an output: a job whose output would be its own input is refused;
    - an existing output is skipped with `skip_existing`, replaced with `overwrite`, else the job is refused;
    - two inputs that would write the same output: the second is refused.
    """
    options = options or RestoreOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IrtoolError(f"{out_dir}: exists and is not a folder")
    found, jobs = expand_inputs(inputs, out_dir.resolve())
    claimed: dict[Path, Path] = {}
    for source, src, rel in found:
        dst = output_path(src, rel, out_dir, options)
        key = dst.resolve()
        if key == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):  # also through links
            jobs.append(Job(source, src, dst, error=f"{src}: the output would overwrite the input; choose another output folder or a --suffix"))
        elif key in claimed:
            jobs.append(Job(source, src, dst, error=f"{src}: its output {dst} is already the output of {claimed[key]}"))
        elif dst.exists() and options.skip_existing:
            claimed[key] = src
            jobs.append(Job(source, src, dst, skip=f"{dst} exists"))
        elif dst.exists() and not options.overwrite:
            claimed[key] = src
            jobs.append(Job(source, src, dst, error=f"{dst}: already exists (pass --overwrite to replace it, or --skip-existing)"))
        else:
            claimed[key] = src
            jobs.append(Job(source, src, dst))
    return jobs


@dataclass
class RestoreReport:
    """What happened to one input. `status` is "ok", "skipped" or "failed" (then `error` says why)."""

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
        return RestoreReport(input=str(job.src or job.source), output=str(job.dst) if job.dst else None, status="failed", error=job.error)
    return RestoreReport(input=str(job.src), output=str(job.dst), status="skipped", warnings=[job.skip] if job.skip else [])
