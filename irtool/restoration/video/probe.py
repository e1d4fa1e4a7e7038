"""What a video file holds, for planning and `--dry-run` (no torch): its streams and frame counts, and the output
container each video job will write."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import IrtoolError, first_line
from .options import VideoError, VideoOptions, is_video, output_suffix, require_av

if TYPE_CHECKING:
    from ..planning import Job


@dataclass
class StreamInfo:
    index: int
    kind: str  #: video, audio, subtitle, data
    codec: str
    text: str  #: one line for people
    frames: int | None = None  #: video: frames (packets counted when the container does not say)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "codec": self.codec,
            "description": self.text,
            "frames": self.frames,
        }


def open_video(path: Path) -> Any:
    av = require_av()
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video ({av_message(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: holds no video stream")
    return container


def av_message(exc: BaseException) -> str:
    return first_line(exc, text=str(getattr(exc, "strerror", None) or exc))


def frame_rate(stream: Any) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def probe(path: str | Path, count_frames: bool = True) -> list[StreamInfo]:
    """The streams of a video file; video frame counts from the container, or by counting packets (fast, no
    decoding) when it does not record them."""
    path = Path(path)
    container = open_video(path)
    try:
        infos: list[StreamInfo] = []
        for s in container.streams:
            ctx = s.codec_context
            name = ctx.name if ctx is not None else "unknown"
            if s.type == "video":
                rate = frame_rate(s)
                duration = (
                    float(s.duration * s.time_base)
                    if s.duration
                    else (container.duration / 1e6 if container.duration else None)
                )
                text = f"{name} {ctx.width}x{ctx.height} {ctx.pix_fmt or '?'}" + (
                    f", {float(rate):.3g} fps" if rate else ""
                )
                info = StreamInfo(s.index, "video", name, text, s.frames or None)
                infos.append(info)
                if duration:
                    info.text += f", {duration:.2f} s"
            elif s.type == "audio":
                layout = getattr(getattr(ctx, "layout", None), "name", "")
                infos.append(StreamInfo(s.index, "audio", name, f"{name} {ctx.sample_rate} Hz {layout}".strip()))
            else:
                infos.append(StreamInfo(s.index, s.type, name, f"{name} (not copied)"))
        missing = [i for i in infos if i.kind == "video" and i.frames is None]
        if count_frames and missing:
            counts: Counter = Counter()
            for packet in container.demux(*[container.streams[i.index] for i in missing]):
                if packet.size:
                    counts[packet.stream.index] += 1
            for info in missing:
                info.frames = counts[info.index]
        for info in infos:
            if info.kind == "video" and info.frames is not None:
                info.text += f", {info.frames} frames"
        return infos
    except require_av().error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot be read ({av_message(exc)})") from None
    finally:
        container.close()


def retarget(
    jobs: Sequence[Job], video: VideoOptions, overwrite: bool = False, skip_existing: bool = False
) -> list[Job]:
    """Video jobs whose codec the input's container cannot hold write .mkv instead; a missing PyAV or an
    unreadable video fails that job only. Other jobs pass through unchanged."""
    out: list[Job] = []
    claimed = {j.dst.resolve() for j in jobs if j.dst is not None and not is_video(j.src)}
    for job in jobs:
        if job.error or job.skip or not is_video(job.src) or job.dst is None:
            out.append(job)
            continue
        assert job.src is not None  # is_video(job.src) held
        try:
            container = open_video(job.src)
            try:
                codec = video.output_codec(container.streams.video[0].codec_context.name)
            finally:
                container.close()
        except IrtoolError as exc:
            message = str(exc)
            out.append(replace(job, error=message if message.startswith(str(job.src)) else f"{job.src}: {message}"))
            continue
        dst = job.dst.with_suffix(output_suffix(job.dst.suffix, codec))
        if dst != job.dst:
            key = dst.resolve()
            if key in claimed:
                job = replace(job, dst=dst, error=f"{job.src}: its output {dst} is already the output of another input")
            elif dst.exists() and skip_existing:
                job = replace(job, dst=dst, skip=f"{dst} exists")
            elif dst.exists() and not overwrite:
                job = replace(
                    job, dst=dst, error=f"{dst}: already exists (pass --overwrite to replace it, or --skip-existing)"
                )
            else:
                job = replace(job, dst=dst)
        claimed.add(dst.resolve())
        out.append(job)
    return out


def dry_run_streams(job: Job) -> list[StreamInfo] | str:
    """A video job's streams for `--dry-run`, or the one-line reason it cannot be read."""
    if job.src is None:
        return job.error or f"{job.source}: no input"
    try:
        return probe(job.src)
    except IrtoolError as exc:
        return str(exc)
