"""`irtool restore`: images and videos through the inference engine, with a progress bar, a closing table and a
summary line; `--dry-run` prints the plan and loads no model."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from . import output
from .base import Interrupted
from .options import (
    ConfigFields,
    Device,
    Model,
    Precision,
    PrecisionOption,
    Quiet,
    Router,
    RouterConfigFields,
    Trust,
    Weights,
    config_fields,
    device_for,
    gpu_list_option,
    gpu_numbers,
    json_flag,
)


class OutputFormat(str, enum.Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"
    bmp = "bmp"


class VideoCodec(str, enum.Enum):
    auto = "auto"
    h264 = "h264"
    hevc = "hevc"
    vp9 = "vp9"
    av1 = "av1"
    ffv1 = "ffv1"


def restore(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT... OUTPUT_DIR",
            help="Image or video files, folders (recursive) or globs ('photos/**/*.jpg'), then the folder for the results (it mirrors the input folders' trees); for one input file, OUTPUT may name the output file (fixed.jpg).",
            show_default=False,
        ),
    ],
    model: Model = None,
    weights_file: Weights = None,
    router: Router = None,
    config: ConfigFields = None,
    router_config: RouterConfigFields = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Routing calibration file (default: yours for these weights from `irtool calibrate`, else the one "
            "shipped beside the weights).",
        ),
    ] = None,
    device: Device = "auto",
    gpu: Annotated[
        str | None,
        gpu_list_option(
            "N: same as --device cuda:N. 0,1,3 or all: one worker process per GPU (with --device cpu: that many CPU processes)."
        ),
    ] = None,
    precision: PrecisionOption = Precision.auto,
    tile: Annotated[
        int,
        typer.Option(
            "--tile",
            "-t",
            help="Largest tile side in px: as few tiles as keep --tile-overlap, laid out evenly, so they may come out smaller than this (0: whole images; tiles are used anyway for images too large for memory, and after running out of GPU memory).",
        ),
    ] = 0,
    tile_overlap: Annotated[
        int,
        typer.Option(
            "--tile-overlap", help="Overlap between tiles in px (blended, no seams; at most a quarter of the tile)."
        ),
    ] = 32,
    route_per_tile: Annotated[
        bool,
        typer.Option(
            "--route-per-tile", help="Let each tile pick its own experts instead of sharing the whole image's routing."
        ),
    ] = False,
    route_size: Annotated[
        int,
        typer.Option(
            "--route-size", help="Longer side (px) of the downscaled copy a tiled image is routed on; 0: full size."
        ),
    ] = 512,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Same-size images (and tiles) per forward pass.")
    ] = 1,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format (auto: the input's).")
    ] = OutputFormat.auto,
    suffix: Annotated[
        str, typer.Option("--suffix", help="Appended to output names: photo.jpg -> photo<SUFFIX>.jpg.")
    ] = "",
    quality: Annotated[int, typer.Option("--quality", help="JPEG/WebP quality.")] = 95,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (never inputs).")] = False,
    max_megapixels: Annotated[
        float | None,
        typer.Option(
            "--max-megapixels",
            help="Refuse images larger than this (default: what half of the available memory holds in the tiled path).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads decoding and encoding around the model.")] = 2,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="CPU threads for the model, run as two independent workers (0: torch's count, all cores unless "
            "OMP_NUM_THREADS says less).",
        ),
    ] = 0,
    trust_checkpoint: Trust = False,
    video_codec: Annotated[
        VideoCodec,
        typer.Option(
            "--video-codec",
            help="Videos: output codec (auto: the input's when irtool can write it, else h264). A container that cannot hold it becomes .mkv.",
        ),
    ] = VideoCodec.auto,
    crf: Annotated[
        int | None,
        typer.Option("--crf", help="Videos: quality, lower is better (default h264 18, hevc 20, vp9 31, av1 30)."),
    ] = None,
    lossless: Annotated[
        bool, typer.Option("--lossless", help="Videos: FFV1 in RGB (.mkv): the restored pixels exactly, for research.")
    ] = False,
    route_per_frame: Annotated[
        bool,
        typer.Option(
            "--route-per-frame",
            help="Videos: let every frame pick its experts (can flicker) instead of one routing per shot.",
        ),
    ] = False,
    cut_threshold: Annotated[
        float,
        typer.Option(
            "--cut-threshold", help="Videos: colour-histogram distance (0..1) between frames that counts as a cut."
        ),
    ] = 0.35,
    start: Annotated[
        str | None, typer.Option("--start", help="Videos: restore from this time (seconds or [hh:]mm:ss).")
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="Videos: restore up to this time.")] = None,
    keep_partial: Annotated[
        bool,
        typer.Option(
            "--keep-partial", help="Videos: on Ctrl-C keep a playable <name>.partial<ext> of the frames done."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List what would be written (and each video's streams and frames), then stop (loads no model).",
        ),
    ] = False,
    as_json: Annotated[bool, json_flag("One JSON object per image on stdout instead of the table.")] = False,
    quiet: Quiet = False,
    report_html: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write a self-contained HTML report (before/after, routing, failures) to FILE (needs irtool[report]).",
        ),
    ] = None,
) -> None:
    """Restore images: noise, rain, haze, blur, low light (whatever the model was trained on) are removed.

    Reports what the router saw in each image: experts per layer, and a degradation name once the checkpoint is calibrated with `irtool calibrate`. Exit status 1 if any image failed.
    """
    from ..restoration.planning import RestoreOptions, split_restore_paths
    from ..restoration.video.options import VideoOptions, is_video, parse_time
    from ..restoration.video.probe import retarget
    from ..shard import world_size

    inputs, out_dir = split_restore_paths(paths)
    gpus = gpu_numbers(gpu)
    options = RestoreOptions(
        model=model,
        weights=weights_file,
        router=router,
        config=config_fields(config),
        router_config=config_fields(router_config, "--router-config"),
        calibration=calibration,
        trust=trust_checkpoint,
        device=device_for(device, gpus[0] if gpus and len(gpus) == 1 and device != "cpu" else None),
        precision=precision.value,
        tile=tile,
        tile_overlap=tile_overlap,
        route_per_tile=route_per_tile,
        route_size=route_size,
        batch_size=batch_size,
        format=None if fmt == OutputFormat.auto else fmt.value,
        suffix=suffix,
        quality=quality,
        overwrite=overwrite,
        skip_existing=skip_existing,
        max_megapixels=max_megapixels,
        workers=workers,
        threads=threads,
    )
    options.check()
    if tile and tile_overlap > tile // 4:
        output.warning(
            f"--tile-overlap {tile_overlap} is over a quarter of --tile {tile}: tiles overlap by at most {tile // 4} px "
            "(only neighbouring tiles may overlap)"
        )
    video_options = VideoOptions(
        codec=None if video_codec == VideoCodec.auto else video_codec.value,
        crf=crf,
        lossless=lossless,
        route_per_frame=route_per_frame,
        cut_threshold=cut_threshold,
        start=parse_time(start, "--start"),
        end=parse_time(end, "--end"),
        keep_partial=keep_partial,
    )
    video_options.check()
    if gpus and len(gpus) > 1 and world_size() == 1 and not dry_run:
        from ..distributed_run import launch

        raise typer.Exit(launch("restore", gpus, device, ("--device", "-d")))
    if report_html and not dry_run:
        from ..report import check_available

        check_available()  # before any work: a missing Jinja2 is one line naming the extra
    ranked, jobs, options = _plan(inputs, out_dir, options, dry_run)
    if any(is_video(job.src) for job in jobs):
        jobs = retarget(jobs, video_options, overwrite=overwrite, skip_existing=skip_existing)
    if dry_run:
        raise typer.Exit(_print_dry_run(jobs, as_json))
    outcome = _run(jobs, out_dir, options, video_options, ranked, as_json=as_json, quiet=quiet)
    failed = _print_summary(outcome, as_json=as_json, quiet=quiet)
    if report_html:
        from ..report.restore import write_report

        page = write_report(
            report_html, outcome.reports, restorer=outcome.restorer, seconds=outcome.seconds, workers=workers
        )
        output.line(f"report: {page}", output.stderr())
    raise typer.Exit(ranked.exit_code(bool(failed)) if ranked is not None else 1 if failed else 0)


def _plan(inputs: list[str], out_dir: str, options: Any, dry_run: bool) -> tuple[Any, list[Any], Any]:
    """(ranked run or None, jobs, options): the whole plan in one process; under torchrun this rank's share of one
    run (see irtool.distributed_run), where every rank but 0 does its work here and exits."""
    from ..shard import world_size

    if world_size() == 1:
        from ..restoration.planning import plan

        return None, plan(inputs, out_dir, options), options
    from ..distributed_run import RankedRestore

    ranked = RankedRestore.start(inputs, out_dir, options)
    if not ranked.is_main:
        try:
            raise typer.Exit(0 if dry_run else ranked.work())
        finally:
            ranked.close()
    return ranked, ranked.jobs, ranked.options


def _print_dry_run(jobs: list[Any], as_json: bool) -> int:
    """What each job would do (write, skip, exists, error) and each video's streams; 1 if any is an error."""
    from dataclasses import replace

    from ..restoration.video.options import is_video
    from ..restoration.video.probe import dry_run_streams

    any_error = False
    for job in jobs:
        action = "error" if job.error else "exists" if job.exists else "skip" if job.skip else "write"
        streams = dry_run_streams(job) if action == "write" and is_video(job.src) else None
        if isinstance(streams, str):
            action, job = "error", replace(job, error=streams)
            streams = None
        if as_json:
            entry: dict[str, Any] = {
                "input": str(job.src or job.source),
                "output": str(job.dst) if job.dst else None,
                "action": action,
                "reason": job.error or job.skip,
            }
            if streams is not None:
                entry["streams"] = [s.to_json() for s in streams]
            output.echo_json(entry)
        else:
            output.line(
                f"{action:5}  {job.src or job.source}"
                + (f" -> {job.dst}" if job.dst and not job.error else "")
                + (f"  ({job.error or job.skip})" if job.error or job.skip else "")
            )
            for info in streams or []:
                output.line(f"         #{info.index} {info.kind}: {info.text}")
        any_error = any_error or action == "error"
    return 1 if any_error else 0


@dataclass
class _Outcome:
    """What a run did: every report (images, then videos), the model it ran, its time and throughput."""

    reports: list[Any] = field(default_factory=list)
    restorer: Any = None
    seconds: float = 0.0
    megapixels: float = 0.0
    images: int = 0
    videos: int = 0


class _Meter:
    """Counts megapixels restored and shows the rate in the image progress bar."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None
        self.megapixels = 0.0
        self.started = 0.0

    def start(self) -> None:
        import time

        self.started = time.perf_counter()

    def elapsed(self) -> float:
        import time

        return time.perf_counter() - self.started

    def tick(self, report: Any) -> None:
        """One image done (on any rank)."""
        self.megapixels += report.megapixels
        elapsed = self.elapsed()
        self.progress.update(self.task, advance=1, rate=f"{self.megapixels / elapsed:.2f} MP/s" if elapsed > 0 else "")


def _run(
    jobs: list[Any], out_dir: str, options: Any, video_options: Any, ranked: Any, *, as_json: bool, quiet: bool
) -> _Outcome:
    """Restore the images, then the videos, each report shown as it arrives (errors and warnings as lines, JSON
    lines with --json); progress bars on a terminal. Ctrl-C: `Interrupted`, saying how many outputs were written."""
    import contextlib
    import itertools

    from ..restoration.video.options import is_video
    from ..restoration.video.restore import VideoReport, restore_videos
    from .video_display import FrameBars

    err = output.stderr()
    video_jobs = [job for job in jobs if is_video(job.src)]
    jobs = [job for job in jobs if not is_video(job.src)]
    progress = _image_progress(err, quiet)
    meter = _Meter(progress)
    written: list[Any] = []  # images written, appended by the engine's writer threads (Ctrl-C's count)
    restorer, stream = _load(jobs, video_jobs, options, ranked, meter.tick, written.append)
    meter.start()
    frames = FrameBars(err, disable=quiet or not err.is_terminal)
    videos = restore_videos(video_jobs, restorer, video_options, frames.bar)  # a generator, empty without videos
    reports = []
    try:
        # closing(): on Ctrl-C the engine cancels queued work at once; writes already started finish atomically
        with progress, contextlib.closing(stream):
            meter.task = progress.add_task("restore", total=len(jobs), rate="", visible=bool(jobs))
            for report in itertools.chain(stream, _after(progress, meter.task), _within(frames.progress, videos)):
                reports.append(report)
                _show_report(report, progress.console, as_json)
                if not isinstance(report, VideoReport) and ranked is None:
                    meter.tick(report)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(jobs, video_jobs, reports, written, ranked, out_dir)) from None
    if ranked is not None:
        ranked.close()
    return _Outcome(reports, restorer, meter.elapsed(), meter.megapixels, len(jobs), len(video_jobs))


def _interrupted(
    jobs: list[Any], video_jobs: list[Any], reports: list[Any], written: list[Any], ranked: Any, out_dir: str
) -> str:
    """The line for a restore stopped by Ctrl-C: how many outputs were written (the engine finishes the writes it
    started, after the reports shown) and how to go on."""
    from ..restoration.video.restore import VideoReport

    def runnable(some: list[Any]) -> int:
        return sum(not (job.error or job.skip) for job in some)

    videos = sum(isinstance(r, VideoReport) and r.ok for r in reports)
    # under torchrun the ranks write: count the reports that came back
    images = len(written) if ranked is None else sum(r.ok and not isinstance(r, VideoReport) for r in reports)
    parts = [f"{images} of {runnable(jobs)} images"] if jobs else []
    parts += [f"{videos} of {runnable(video_jobs)} videos"] if video_jobs else []
    return f"interrupted: {' and '.join(parts) or 'nothing'} written to {out_dir}; run the same command with --skip-existing to finish"


def _image_progress(console: Any, quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("restoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _load(
    jobs: list[Any], video_jobs: list[Any], options: Any, ranked: Any, tick: Any, on_written: Any
) -> tuple[Any, Any]:
    """(the restorer, the stream of image reports): the model is loaded only when some job has work to do and some
    input's header says it can be read, else each image's line says why not; `on_written` hears of every image
    written."""
    if ranked is not None:
        restorer = ranked.load()
        for note in restorer.notes if restorer else []:
            output.note(note)
        return restorer, ranked.reports(restorer, arrived=tick)
    from ..restoration.planning import none_readable, report_unrunnable

    refused = none_readable(video_jobs + jobs)  # headers looked at: no model for inputs that none can read
    if refused is None:
        from ..restoration.engine import Restorer, restore_files

        restorer = Restorer.load(options)
        if restorer.device.type == "cpu":
            from ..devices.speed import tune_cpu_allocator

            tune_cpu_allocator()  # freed activations are reused instead of faulted in again for every image
        for note in restorer.notes:
            output.note(note)
        return restorer, restore_files(jobs, restorer, on_written=on_written)
    return None, (report_unrunnable(job) for job in refused[len(video_jobs) :])  # nothing to run: no model to load


def _show_report(report: Any, console: Any, as_json: bool) -> None:
    """One finished input: its error or warnings as lines on `console` (the progress bar's), with --json its report."""
    if report.failed:
        output.error(report.error, console)
    for warning in report.warnings if report.ok else []:
        output.warning(f"{report.input}: {warning}", console)
    if as_json:
        output.echo_json(report.to_json())


def _after(progress: Any, task: Any) -> Iterator[Any]:
    """Stops the image bar once the images are done, before the frame bar starts: rich shows one live display at a
    time (yields nothing)."""
    progress.update(task, visible=False)
    progress.stop()
    return
    yield


def _within(progress: Any, reports: Iterator[Any]) -> Iterator[Any]:
    """The reports, with the frame progress bar shown while they are made."""
    import contextlib

    with progress, contextlib.closing(reports):  # type: ignore[type-var]  # video.restore_videos: a generator
        yield from reports


def _print_summary(outcome: _Outcome, *, as_json: bool, quiet: bool) -> int:
    """The closing table (not with --json or --quiet) and the summary line on stderr; returns the failure count."""
    from ..restoration.planning import EXISTS_HINT
    from ..restoration.video.restore import VideoReport
    from .video_display import shots_table

    reports = outcome.reports
    failed = sum(r.failed for r in reports)
    skipped = sum(r.status == "skipped" for r in reports)
    existing = sum(r.status == "exists" for r in reports)
    if not as_json and not quiet:
        table, hidden = _closing_table(reports)
        console = output.stdout()
        if table.row_count:
            console.print(table)
        if hidden:
            output.line(f"... and {hidden} more (use --json for every image)")
        if outcome.restorer is not None and any(r.degradation == "unknown" for r in reports):
            from ..restoration.calibration import unknown_explanation

            output.line(unknown_explanation(outcome.restorer.calibration), console)
        for report in reports:
            if isinstance(report, VideoReport) and report.ok:
                console.print(shots_table(report))
    kind = "images" if not outcome.videos else "videos" if not outcome.images else "inputs"
    elapsed = outcome.seconds
    summary = f"restored {sum(r.ok for r in reports)} of {len(reports)} {kind} in {elapsed:.1f}s"
    if outcome.images:
        summary += f" ({outcome.megapixels / max(elapsed, 1e-9):.2f} MP/s)"
    extras = [f"{failed} failed" if failed else "", f"{skipped} skipped" if skipped else ""]
    extras += [f"{existing} left as they were (their outputs exist; {EXISTS_HINT})" if existing else ""]
    extras = [e for e in extras if e]
    if not quiet or failed or existing:
        output.line(summary + (f"; {', '.join(extras)}" if extras else ""), output.stderr())
    return failed


def _experts_text(experts: list | None) -> str:
    """Top-1 expert of each MoCE layer as digits ("3333222211"); top-k as "3+1"."""
    if not experts:
        return "-"
    return (
        " ".join("+".join(str(e) for e in layer) for layer in experts)
        if any(len(l) > 1 for l in experts)
        else "".join(str(l[0]) for l in experts)
    )


def _degradation_text(report: Any) -> str:
    if report.degradation is None:
        return "-"
    if report.confidence is None:
        return report.degradation
    return f"{report.degradation} {report.confidence:.0%}"


def _closing_table(reports: list, max_rows: int = 100) -> tuple[Any, int]:
    """The table under a run: file, degradation, experts, tiles, time (at most `max_rows` rows; how many hidden)."""
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("file", overflow="fold")  # long paths wrap rather than lose their file name
    for column, justify in (("degradation", "left"), ("experts", "left"), ("tiles", "right"), ("time", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    ran = [r for r in reports if r.status not in ("skipped", "exists")]
    for r in ran[:max_rows]:
        if r.failed:
            table.add_row(output.plain(r.input), output.plain("failed", "red"), "", "", "")
        else:
            table.add_row(output.plain(r.input), output.plain(_degradation_text(r)), _experts_text(r.experts),
                          str(r.tiles), f"{r.seconds:.2f}s")  # fmt: skip
    return table, max(0, len(ran) - max_rows)
