"""Pass 2, restoring one video: decode again, restore the frames in batches (never across a cut) with the shot's
routing imposed, encode and mux, in three threads joined by bounded queues; and `restore_videos` for a run's video
jobs, one failure failing that video only."""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import IrtoolError, first_line
from ...images.pixels import from_float
from ..planning import RestoreReport
from .analysis import Analysis, analyse
from .decode import Event, Source, decode_events, to_rgb
from .encode import Sink, Writer
from .options import VideoError, VideoOptions
from .shots import Shot

if TYPE_CHECKING:
    from ..engine import Outcome, Restorer
    from ..planning import Job


@dataclass
class VideoReport(RestoreReport):
    """What happened to one video: a `RestoreReport` (degradation: the longest shot's; routing: "shot" or
    "per-frame") plus the video's own fields, reported under "video"."""

    frames: int = 0
    fps: float | None = None
    duration: float | None = None
    codec: str | None = None
    audio: list[str] = field(default_factory=list)
    shots: list[Shot] = field(default_factory=list)
    damaged: list[dict[str, Any]] = field(default_factory=list)
    partial: bool = False

    @property
    def megapixels(self) -> float:
        return 0.0  # the image progress counts images; videos have their own bar in frames

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "video": {
                "frames": self.frames,
                "fps": None if self.fps is None else round(self.fps, 4),
                "duration": None if self.duration is None else round(self.duration, 4),
                "codec": self.codec,
                "audio": self.audio,
                "shots": [s.to_json() for s in self.shots],
                "damaged": self.damaged,
                "partial": self.partial,
            },
        }


#: progress(phase, done, total): phase "analyse" (decoding, total None until known) or "restore" (frames)
Progress = Callable[[str, int, "int | None"], None]


def partial_path(dst: Path) -> Path:
    return dst.with_name(f"{dst.stem}.partial{dst.suffix}")


def restore_video(
    src_path: Path, dst: Path, restorer: Restorer, video: VideoOptions, progress: Progress | None = None
) -> VideoReport:
    """Restore one video file to `dst` (see the module docstring). Raises VideoError for an unreadable input or
    an unwritable output, KeyboardInterrupt after cleaning up (or keeping a partial file); returns the report.

    Pass 1 (`analyse`) finds the shots; pass 2 decodes again in a reader thread, restores batches of one shot's
    frames here (`_FramePass`) and encodes in a writer thread (`Writer`) into a temp file published at the end."""
    from ...images import files as io

    video.check()
    if not video.route_per_frame and not restorer.spec.capabilities.imposed_routing:
        video = replace(video, route_per_frame=True)  # one routing per shot needs a model that takes a given one
    started = time.perf_counter()
    options = restorer.options
    if dst.exists() and not options.overwrite:
        raise VideoError(f"{dst}: already exists (pass --overwrite to replace it, or --skip-existing)")
    analysis = analyse(
        src_path, restorer, video, None if progress is None else (lambda n: progress("analyse", n, None))
    )
    src = Source.open(src_path)
    report = _new_report(src_path, dst, src, analysis, restorer, video)
    tmp = _temp_beside(dst, src)
    published = False
    stop = threading.Event()
    writer: Writer | None = None
    reader: threading.Thread | None = None
    try:
        sink = Sink.open(tmp, dst.suffix, src, analysis, video)
        report.codec = sink.codec
        depth = max(4, 2 * options.batch_size + 4)
        writer = Writer(sink, src, depth)
        writer.start()
        events: queue.Queue = queue.Queue(depth)
        reader_error: list[BaseException] = []
        reader = threading.Thread(
            target=_read_events, args=(src, video, stop, events, reader_error), name="irtool-video-read", daemon=True
        )
        reader.start()
        frames = _FramePass(restorer, video, analysis, src, writer, report, progress)
        frames.run(events, depth)
        if reader_error:
            raise reader_error[0]
        writer.put(Writer.END)
        writer.join()
        if writer.error is not None:
            raise writer.error
        io.publish(tmp, dst, options.overwrite, error=VideoError)
        published = True
        frames.finish(writer)
        report.seconds = time.perf_counter() - started
        return report
    except KeyboardInterrupt:
        stop.set()
        if writer is not None and video.keep_partial and writer.error is None:
            # Frames already handed to the writer are encoded, the encoder flushed, the container closed properly.
            writer.put(Writer.END)
            writer.join()
            if writer.error is None and writer.written:
                os.replace(tmp, partial_path(dst))
                published = True
        raise
    finally:
        stop.set()
        if writer is not None and writer.is_alive():
            writer.abort.set()
            writer.join()
        if reader is not None:
            reader.join(timeout=5)
        src.close()
        if not published and tmp.exists():
            tmp.unlink()


def _new_report(
    src_path: Path, dst: Path, src: Source, analysis: Analysis, restorer: Restorer, video: VideoOptions
) -> VideoReport:
    """The report as pass 2 starts: what pass 1 found and how the video will be restored."""
    from ...devices.policy import precision_name

    report = VideoReport(input=str(src_path), output=str(dst), width=analysis.width, height=analysis.height)
    report.routing = "per-frame" if video.route_per_frame else "shot"
    report.precision = precision_name(restorer.amp_dtype)
    report.frames, report.fps = analysis.frames, float(src.rate) if src.rate else None
    report.audio = [a.codec_context.name for a in src.audio]
    report.warnings += [f"stream #{s.index} ({s.type}) is not copied" for s in src.others]
    report.shots = analysis.shots
    return report


def _temp_beside(dst: Path, src: Source) -> Path:
    """A new hidden temp file in `dst`'s folder, with the mode a new file gets; VideoError (closing `src`) if the
    folder cannot be written."""
    from ...images import files as io

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".irtool-tmp{dst.suffix}", dir=dst.parent)
        os.close(fd)
        os.chmod(name, io.file_mode())
    except OSError as exc:
        src.close()
        raise VideoError(f"{dst}: cannot write ({exc.strerror or exc})") from None
    return Path(name)


def _read_events(
    src: Source, video: VideoOptions, stop: threading.Event, events: queue.Queue, errors: list[BaseException]
) -> None:
    """Pass 2's reader thread: decoded frames (as 8/16-bit `Image`s), damaged-frame markers and audio packets into
    `events`, then None; an exception is handed over in `errors`. Stops when `stop` is set."""
    from ...images import files as io

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                events.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for event in decode_events(src, video, with_audio=True, stop=stop):
            if event.kind == "frame":
                rgb = to_rgb(event.frame, src.deep)  # uint8/uint16: the float copy is made in the model thread
                event.frame = io.Image(pixels=rgb, dtype=rgb.dtype)
            if not put(event) or stop.is_set():
                return
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        errors.append(exc)
    finally:
        put(None)  # the end marker, unless the main thread has stopped listening


class _FramePass:
    """Pass 2's model side: batches of one shot's frames through the restorer, every event handed to the writer in
    order, and what the report needs counted on the way."""

    def __init__(
        self,
        restorer: Restorer,
        video: VideoOptions,
        analysis: Analysis,
        src: Source,
        writer: Writer,
        report: VideoReport,
        progress: Progress | None,
    ) -> None:
        self.restorer, self.video, self.src, self.writer = restorer, video, src, writer
        self.report, self.progress, self.total = report, progress, analysis.frames
        self.shots = analysis.shots
        self.shot_of = _shot_index(self.shots)
        self.out_dtype = np.uint16 if src.deep else np.uint8
        self.pending: list[Event] = []
        self.per_frame: dict[int, Counter] = {}  #: per shot: how often each expert choice was made
        self.names: dict[int, Counter] = {}  #: per shot: how often each degradation was named
        self.done = 0
        self.tiles = 0
        self.tile_size: list[int] | None = None

    def run(self, events: queue.Queue, depth: int) -> None:
        """Consume the reader's events until its end marker."""
        if self.progress is not None:
            self.progress("restore", 0, self.total)
        while True:
            event = events.get()
            if event is None:
                break
            if event.kind in ("frame", "damaged") and self._batch_ends_before(event):
                self.flush()
            self.pending.append(event)
            if len(self.pending) >= 8 * depth:  # a long run of audio packets: do not hold them
                self.flush()
        self.flush()

    def _batch_ends_before(self, event: Event) -> bool:
        """The pending frames form a batch: it is full, or `event` belongs to another shot."""
        frames = [e for e in self.pending if e.kind == "frame"]
        if not frames:
            return False
        return len(frames) >= self.restorer.options.batch_size or self.shot_of(frames[0].index) != self.shot_of(
            event.index
        )

    def flush(self) -> None:
        """Restore the pending frames in one batch and hand every pending event to the writer, in order."""
        frames = [e for e in self.pending if e.kind == "frame"]
        outcomes: list[Outcome] = []
        if frames:
            shot = self.shots[self.shot_of(frames[0].index)]
            outcomes = self.restorer.restore(
                [e.frame for e in frames], routing=None if self.video.route_per_frame else shot.routing
            )
        results = iter(outcomes)
        for e in self.pending:
            if e.kind == "frame":
                self._frame_done(e, next(results))
            elif e.kind == "damaged":
                self.writer.put(("damaged", e.pts))
                self.report.damaged.append(
                    {"frame": e.index, "time": round(self.src.seconds(e.pts), 4), "error": e.error}
                )
                self.done += 1
            else:
                self.writer.put(("audio", e.packet))
        self.pending.clear()
        if self.progress is not None and frames:
            self.progress("restore", self.done, self.total)

    def _frame_done(self, e: Event, outcome: Outcome) -> None:
        assert outcome.rgb is not None  # Restorer.restore gives float RGB (only restore_large gives samples)
        self.writer.put(("video", e.pts, from_float(outcome.rgb, self.out_dtype), e.duration))
        k = self.shot_of(e.index)
        self.per_frame.setdefault(k, Counter())[_key(outcome.experts)] += 1
        self.names.setdefault(k, Counter())[(outcome.degradation, outcome.experts is None)] += 1
        if self.video.route_per_frame and self.shots[k].experts is None:
            self.shots[k].experts, self.shots[k].gates = outcome.experts, outcome.gates
        self.tiles, self.tile_size = outcome.tiles, outcome.tile_size
        for w in outcome.warnings:
            if w not in self.report.warnings:
                self.report.warnings.append(w)
        self.done += 1

    def finish(self, writer: Writer) -> None:
        """Fill the report once the video is written: warnings, each shot's routing, the longest shot's reading."""
        report, shots = self.report, self.shots
        if writer.dropped:
            report.warnings.append(f"{len(writer.dropped)} replacement frame(s) out of timestamp order were dropped")
        if report.damaged:
            report.warnings.append(
                f"{len(report.damaged)} damaged frame(s) replaced by their restored neighbour: "
                + ", ".join(str(d["frame"]) for d in report.damaged[:10])
            )
        if self.video.route_per_frame:
            for k, shot in enumerate(shots):
                counts = self.per_frame.get(k, Counter())
                shot.routings = len(counts)
                if counts:
                    common = counts.most_common(1)[0][0]
                    shot.experts = [list(layer) for layer in common] if common else None
                (name, _), _ = (self.names.get(k) or Counter({(None, True): 1})).most_common(1)[0]
                shot.degradation = name
        longest = max(shots, key=lambda s: s.end - s.start)
        report.degradation, report.confidence = longest.degradation, longest.confidence
        report.experts, report.gates = longest.experts, longest.gates
        report.tiles, report.tile_size = self.tiles, self.tile_size
        report.duration = shots[-1].end_time - shots[0].start_time if shots else None


def _key(experts: list[list[int]] | None) -> tuple:
    return tuple(tuple(layer) for layer in experts) if experts else ()


def _shot_index(shots: list[Shot]) -> Callable[[int], int]:
    starts = [s.start for s in shots]

    def find(index: int) -> int:
        import bisect

        return max(0, bisect.bisect_right(starts, index) - 1)

    return find


def restore_videos(
    jobs: Sequence[Job],
    restorer: Restorer,
    video: VideoOptions,
    progress: Callable[[Path], AbstractContextManager[Progress | None]] | None = None,
) -> Iterator[VideoReport]:
    """Restore video jobs one after the other; one failure fails that video only. `progress(src)`: for each video,
    a context giving the `Progress` callback that shows it (the CLI's bar in frames), or None."""
    for job in jobs:
        if job.error or job.skip:
            yield VideoReport(
                input=str(job.src or job.source),
                output=str(job.dst) if job.dst else None,
                status="failed" if job.error else "skipped",
                error=job.error,
                warnings=[job.skip] if job.skip else [],
            )
            continue
        assert job.src is not None and job.dst is not None  # a job that is neither failed nor skipped has both
        with progress(job.src) if progress is not None else nullcontext(None) as show:
            try:
                yield restore_video(job.src, job.dst, restorer, video, show)
            except IrtoolError as exc:
                message = str(exc)
                yield VideoReport(
                    input=str(job.src),
                    output=str(job.dst),
                    status="failed",
                    error=message
                    if message.startswith(str(job.src)) or message.startswith(str(job.dst))
                    else f"{job.src}: {message}",
                )
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a bug on one odd file must not stop the run
                yield VideoReport(
                    input=str(job.src),
                    output=str(job.dst),
                    status="failed",
                    error=f"{job.src}: cannot be restored ({first_line(exc, with_type=True)})",
                )
