"""Restoring videos: decode with PyAV, restore the frames through the engine, encode, copy the audio.

`irtool restore clip.mp4 out/` (and folders holding videos beside images) comes here for every video job.

Two passes over the file:
1. **Analyse** (decode only): cut detection, frame count, damaged frames, and a few frames per shot kept at the
   routing size. A cut is where the colour histograms of consecutive frames differ by more than `cut_threshold`:
   each frame is shrunk to 96 px wide, each RGB channel binned into 16 bins, and the score is half the L1 distance
   of the normalised histograms averaged over the channels (0 = same colours, 1 = no colour in common). Histograms
   ignore motion and average away noise and rain streaks, so a moving camera or a rainy frame is not a cut; a shot
   is at least `MIN_SHOT_FRAMES` long, so a flash does not make two cuts. Each shot's routing is decided once:
   `route_samples` frames spread evenly across the shot (kept with a stride that doubles as the shot grows, so
   memory stays bounded) are routed at `--route-size`, as the engine routes a tiled image, and their router
   probabilities averaged per layer; the top-k of that average are the shot's experts and gates.
2. **Restore**: decode again, restore the frames in batches (never across a cut) with the shot's routing imposed
   (`Restorer.restore(images, routing=...)`, the same imposed routing tiles share), encode and mux. Decoding,
   the model and encoding run in three threads joined by bounded queues: memory does not grow with the clip.
   `route_per_frame` lets every frame route itself (the naive behaviour, which can flicker).

What is kept: every frame's timestamp (pts in the input's time base, so variable frame rate survives), the frame
rate, resolution, sample aspect ratio, display matrix (rotation and flips), colour range/space/primaries/transfer
tags, the bit depth (10-bit stays 10-bit where the codec has it), container and stream metadata, and every audio
stream, copied packet by packet (not re-encoded). Subtitle and data streams are not copied (a warning says so).
A frame the decoder cannot decode (or marks corrupt) is reported and replaced by its restored neighbour. The output
is written under a temp name and renamed when complete: an interruption leaves nothing, or with `keep_partial` a
playable `<name>.partial<ext>` holding the frames done.

Imports the standard library, numpy and irtool.restoration.planning (the report and the file suffixes) at import time; PyAV, torch
and the engine only inside the functions that need them.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import re
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IrtoolError, first_line
from ..images.pixels import from_float
from .planning import VIDEO_SUFFIXES, RestoreReport

if TYPE_CHECKING:
    from ..archs.spec import RoutingRecord

#: --video-codec names -> the FFmpeg encoder PyAV's wheel bundles
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1", "ffv1": "ffv1"}
#: --crf defaults: visually transparent for the x264/x265 scales, the encoders' usual good quality for VP9/AV1
DEFAULT_CRF = {"h264": 18, "hevc": 20, "vp9": 31, "av1": 30}
_CRF_RANGE = {"h264": (0, 51), "hevc": (0, 51), "vp9": (0, 63), "av1": (0, 63)}
#: which codecs each container holds (anything else goes to .mkv)
_CONTAINER_CODECS = {
    ".mp4": {"h264", "hevc", "vp9", "av1"},
    ".m4v": {"h264", "hevc", "vp9", "av1"},
    ".mov": {"h264", "hevc"},
    ".mkv": set(ENCODERS),
    ".webm": {"vp9", "av1"},
    ".avi": {"h264", "ffv1"},
}
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}

CUT_THRESHOLD = 0.35
ROUTE_SAMPLES = 5
MIN_SHOT_FRAMES = 4
_HIST_WIDTH, _HIST_BINS = 96, 16


class VideoError(IrtoolError):
    """A video cannot be read, restored or written."""


def require_av() -> Any:
    """The `av` module, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise VideoError("restoring videos needs PyAV: pip install 'irtool[video]'") from None
    return av


def is_video(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


def parse_time(text: str | float | None, flag: str = "--start") -> float | None:
    """Seconds from "12.5", "1:02.5" or "1:00:02"; None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        if not re.fullmatch(r"\d+(\.\d*)?|(\d+:){1,2}\d+(\.\d*)?", text.strip()):
            raise VideoError(f"{flag} {text}: a time in seconds (12.5) or [hh:]mm:ss(.s)")
        seconds = 0.0
        for part in text.strip().split(":"):
            seconds = seconds * 60 + float(part)
    if seconds < 0 or not math.isfinite(seconds):
        raise VideoError(f"{flag} {text}: must be a time >= 0")
    return seconds


@dataclass(frozen=True)
class VideoOptions:
    """How videos are encoded and routed (the image options, RestoreOptions, apply to their frames too)."""

    codec: str | None = None  #: h264, hevc, vp9, av1, ffv1; None: the input's codec when it is one of these, else h264
    crf: int | None = None  #: quality (lower is better); None: DEFAULT_CRF
    lossless: bool = False  #: FFV1 in planar RGB: the restored pixels exactly, for research
    route_per_frame: bool = False  #: every frame routes itself (can flicker) instead of one routing per shot
    route_samples: int = ROUTE_SAMPLES  #: frames per shot the shot's routing is decided on
    cut_threshold: float = CUT_THRESHOLD  #: histogram distance above which consecutive frames are a cut
    start: float | None = None  #: seconds from the start of the video stream
    end: float | None = None
    keep_partial: bool = False  #: on interruption keep a playable <name>.partial<ext>

    def check(self) -> None:
        if self.codec is not None and self.codec not in ENCODERS:
            raise VideoError(f"--video-codec {self.codec}: one of {', '.join(ENCODERS)}")
        if self.lossless and self.codec not in (None, "ffv1"):
            raise VideoError(f"--lossless writes FFV1; it cannot be combined with --video-codec {self.codec}")
        if self.crf is not None:
            if self.lossless or self.codec == "ffv1":
                raise VideoError("--crf: FFV1 is lossless and has no quality setting")
            if self.codec is not None and not _CRF_RANGE[self.codec][0] <= self.crf <= _CRF_RANGE[self.codec][1]:
                low, high = _CRF_RANGE[self.codec]
                raise VideoError(f"--crf {self.crf}: between {low} and {high} for {self.codec}")
        if self.route_samples < 1:
            raise VideoError("--route-samples must be >= 1")
        if not 0 < self.cut_threshold <= 1:
            raise VideoError(f"--cut-threshold {self.cut_threshold}: between 0 (exclusive) and 1")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise VideoError(f"--end {self.end:g} must be after --start {self.start:g}")

    def output_codec(self, input_codec: str | None) -> str:
        if self.lossless:
            return "ffv1"
        if self.codec:
            return self.codec
        return input_codec if input_codec in ENCODERS else "h264"


def output_suffix(suffix: str, codec: str) -> str:
    """The input's container when it can hold `codec`, else .mkv (which holds every codec irtool writes)."""
    return suffix if codec in _CONTAINER_CODECS.get(suffix.lower(), set()) else ".mkv"


# --------------------------------------------------------------------------------------------------------------------
# Probing (for planning and --dry-run; no torch)


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


def _open(path: Path) -> Any:
    av = require_av()
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video ({_av_message(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: holds no video stream")
    return container


def _av_message(exc: BaseException) -> str:
    return first_line(exc, text=str(getattr(exc, "strerror", None) or exc))


def _rate(stream: Any) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def probe(path: str | Path, count_frames: bool = True) -> list[StreamInfo]:
    """The streams of a video file; video frame counts from the container, or by counting packets (fast, no
    decoding) when it does not record them."""
    path = Path(path)
    container = _open(path)
    try:
        infos: list[StreamInfo] = []
        for s in container.streams:
            ctx = s.codec_context
            name = ctx.name if ctx is not None else "unknown"
            if s.type == "video":
                rate = _rate(s)
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
        raise VideoError(f"{path}: cannot be read ({_av_message(exc)})") from None
    finally:
        container.close()


def retarget(
    jobs: Sequence[Any], video: VideoOptions, overwrite: bool = False, skip_existing: bool = False
) -> list[Any]:
    """Video jobs whose codec the input's container cannot hold write .mkv instead; a missing PyAV or an
    unreadable video fails that job only. Other jobs pass through unchanged."""
    out: list[Any] = []
    claimed = {j.dst.resolve() for j in jobs if j.dst is not None and not is_video(j.src)}
    for job in jobs:
        if job.error or job.skip or not is_video(job.src) or job.dst is None:
            out.append(job)
            continue
        try:
            container = _open(job.src)
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
        claimed.add(job.dst.resolve())
        out.append(job)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Shots: the cut detector and one routing per shot


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """(3, bins) normalised per-channel histograms of a (small) uint8 RGB frame."""
    hist = np.stack([np.bincount(rgb[..., c].ravel() >> 4, minlength=_HIST_BINS) for c in range(3)]).astype(np.float64)
    return hist / max(1, rgb.shape[0] * rgb.shape[1])


def cut_score(previous: np.ndarray, current: np.ndarray) -> float:
    """0 (same colours) .. 1 (no colour in common): half the L1 distance of the histograms, mean over channels."""
    return float(0.5 * np.abs(previous - current).sum(axis=1).mean())


@dataclass
class Shot:
    """Frames [start, end) of the restored range that share one routing."""

    start: int
    end: int
    start_time: float = 0.0  #: seconds from the start of the video stream
    end_time: float = 0.0
    samples: list[int] = field(default_factory=list)  #: the frames its routing was decided on
    routing: Any = None
    degradation: str | None = None
    confidence: float | None = None
    experts: list[list[int]] | None = None
    gates: list[list[float]] | None = None
    routings: int = 1  #: distinct routings its frames ran with (1 with shot routing)

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": [self.start, self.end],
            "time": [round(self.start_time, 4), round(self.end_time, 4)],
            "degradation": self.degradation,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "experts": self.experts,
            "gates": None if self.gates is None else [[round(g, 4) for g in layer] for layer in self.gates],
            "routings": self.routings,
            "samples": self.samples,
        }


class _Sampler:
    """Frames of one shot kept for routing: every `stride`-th, the stride doubling whenever more than twice the
    wanted number are kept, so a shot of any length holds at most 2n+1 frames."""

    def __init__(self, n: int) -> None:
        self.n, self.stride, self.kept = n, 1, []  # type: ignore[var-annotated]

    def offer(self, k: int, make: Callable[[], np.ndarray]) -> None:
        if k % self.stride:
            return
        self.kept.append((k, make()))
        if len(self.kept) > 2 * self.n:
            self.kept = self.kept[::2]
            self.stride *= 2

    def pick(self) -> list[tuple[int, np.ndarray]]:
        m = len(self.kept)
        if m <= self.n:
            return list(self.kept)
        return [self.kept[min(m - 1, int((i + 0.5) * m / self.n))] for i in range(self.n)]


def shared_routing(routing: RoutingRecord) -> RoutingRecord:
    """One routing (batch 1) for a shot from the routing of its sample frames: each routing type's `consensus()`
    (MoCE-IR: per layer, the mean of the frames' router probabilities, so that the routing calibration names the shot
    from the mean routing signature; LoRA-IR: mean class logits and prior)."""
    return routing.consensus()


# --------------------------------------------------------------------------------------------------------------------
# Decoding


def _bits(pix_fmt: str | None) -> int:
    av = require_av()
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt or "yuv420p").components)
    except (ValueError, av.error.FFmpegError):
        return 8


@dataclass
class _Source:
    """An open input and what the restore keeps of it."""

    path: Path
    container: Any
    video: Any
    audio: list[Any]
    others: list[Any]
    time_base: Fraction
    first_pts: int
    rate: Fraction | None
    deep: bool  #: more than 8 bits per sample: decoded to 16-bit RGB

    @classmethod
    def open(cls, path: Path) -> _Source:
        container = _open(path)
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        audio = list(container.streams.audio)
        others = [
            s for s in container.streams if s.type not in ("video", "audio") or (s.type == "video" and s is not video)
        ]
        tb = Fraction(video.time_base) if video.time_base else Fraction(1, 90000)
        return cls(
            path,
            container,
            video,
            audio,
            others,
            tb,
            int(video.start_time or 0),
            _rate(video),
            _bits(video.codec_context.pix_fmt) > 8,
        )

    def close(self) -> None:
        self.container.close()

    def seconds(self, pts: int | None) -> float:
        """Seconds from the restored range's start; an event without a timestamp (never a frame) counts as 0."""
        return 0.0 if pts is None else float((pts - self.first_pts) * self.time_base)


def _routing_rgb(frame: Any, deep: bool, height: int, width: int) -> np.ndarray:
    """A frame as `_rgb` makes it, scaled to the routing size (height, width) unless it has that size already."""
    resize = (height, width) != (frame.height, frame.width)
    return _rgb(frame, deep, width if resize else None, height if resize else None)


def _rgb(frame: Any, deep: bool, width: int | None = None, height: int | None = None) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 (uint16 when deep) RGB, using the frame's own colour matrix and range."""
    return frame.to_ndarray(
        format="rgb48le" if deep else "rgb24",
        width=width,
        height=height,
        src_color_range=frame.color_range or None,
        interpolation="AREA" if width else None,
    )


@dataclass
class _Event:
    kind: str  #: frame, damaged, audio
    index: int = -1  #: frame number within the restored range
    pts: int | None = None
    frame: Any = None
    packet: Any = None
    error: str | None = None
    duration: int | None = None  #: in the stream's time base, when the decoder knows it (keeps the last frame's)


def _events(
    src: _Source, video: VideoOptions, with_audio: bool, stop: threading.Event | None = None
) -> Iterator[_Event]:
    """The frames of the restored range in order, numbered; undecodable or corrupt ones as "damaged"; and (with
    audio) the audio packets of the range in demux order."""
    av = require_av()
    start = video.start or 0.0
    end = video.end if video.end is not None else math.inf
    if start > 0:
        try:
            src.container.seek(src.first_pts + int(start / src.time_base), stream=src.video, backward=True)
        except av.error.FFmpegError:
            pass  # unseekable: decode from the beginning and skip
    streams = [src.video] + (src.audio if with_audio else [])
    index, last_pts, video_done = 0, None, False
    step = int(round(1 / (src.rate * src.time_base))) if src.rate else 1

    def in_range(pts: int) -> int:  # -1 before the range, 0 inside, 1 after
        t = src.seconds(pts)
        return -1 if t < start - 1e-9 else 1 if t >= end - 1e-9 else 0

    for packet in src.container.demux(*streams):
        if stop is not None and stop.is_set():
            return
        if packet.stream.type == "audio":
            if packet.size and packet.pts is not None:
                t = float(packet.pts * packet.time_base) - float(src.first_pts * src.time_base)
                if (not video.start or t >= start - 1e-9) and t < end:  # a whole video keeps its priming packets
                    yield _Event("audio", packet=packet)
                elif t >= end and video_done:
                    return
            continue
        if video_done:
            continue
        try:
            frames = packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            pts = packet.pts
            if pts is None or in_range(pts) != 0:
                continue
            yield _Event("damaged", index, pts, error=_av_message(exc))
            index, last_pts = index + 1, pts
            continue
        for frame in frames:
            pts = frame.pts if frame.pts is not None else (last_pts + step if last_pts is not None else src.first_pts)
            where = in_range(pts)
            if where < 0:
                continue
            if where > 0:
                if not with_audio:
                    return
                video_done = True  # keep reading audio packets up to the end time
                break
            if frame.is_corrupt:
                yield _Event("damaged", index, pts, error="the decoder marked the frame corrupt")
            else:
                yield _Event("frame", index, pts, frame=frame, duration=frame.duration or None)
            index, last_pts = index + 1, pts


def _route_size(height: int, width: int, route_size: int) -> tuple[int, int]:
    if not route_size or max(height, width) <= route_size:
        return height, width
    scale = route_size / max(height, width)
    return max(8, round(height * scale)), max(8, round(width * scale))


@dataclass
class Analysis:
    frames: int
    first_pts: int  #: of the first frame of the restored range
    shots: list[Shot]
    damaged: list[int]
    width: int
    height: int
    display_matrix: list[int] | None


def analyse(path: Path, restorer: Any, video: VideoOptions, progress: Callable[[int], None] | None = None) -> Analysis:
    """Pass 1: decode the restored range once, find the cuts, count frames, and (shot routing) route each shot."""
    from ..images.tensors import to_tensor

    src = _Source.open(path)
    shots: list[Shot] = []
    damaged: list[int] = []
    matrix: list[int] | None = None
    width = height = 0
    try:
        previous = None
        shot_start, shot_time, sampler = 0, 0.0, _Sampler(video.route_samples)
        route_hw: tuple[int, int] | None = None
        count, first_pts, last_t = 0, None, 0.0

        def close_shot(end: int, end_time: float) -> None:
            shots.append(Shot(shot_start, end, shot_time, end_time))
            picked = sampler.pick()
            if not video.route_per_frame and picked:
                shots[-1].samples = [shot_start + k for k, _ in picked]
                batch = to_tensor(np.stack([a for _, a in picked]), restorer.device)
                routing = restorer.route(batch)
                _describe(shots[-1], shared_routing(routing), restorer)

        for event in _events(src, video, with_audio=False):
            count = event.index + 1
            t = last_t = src.seconds(event.pts)
            first_pts = event.pts if first_pts is None else first_pts
            if event.kind == "damaged":
                damaged.append(event.index)
            else:
                frame = event.frame
                if not width:
                    width, height = frame.width, frame.height
                    route_hw = _route_size(height, width, restorer.options.route_size)
                    matrix = _display_matrix(frame)
                small = _rgb(frame, False, _HIST_WIDTH, max(2, round(_HIST_WIDTH * frame.height / max(1, frame.width))))
                hist = colour_histogram(small)
                if (
                    previous is not None
                    and event.index - shot_start >= MIN_SHOT_FRAMES
                    and cut_score(previous, hist) > video.cut_threshold
                ):
                    close_shot(event.index, t)
                    shot_start, shot_time, sampler = event.index, t, _Sampler(video.route_samples)
                previous = hist
                if not video.route_per_frame:
                    h, w = route_hw  # type: ignore[misc]
                    sampler.offer(event.index - shot_start, functools.partial(_routing_rgb, frame, src.deep, h, w))
            if progress is not None:
                progress(count)
        if count == 0:
            raise VideoError(
                f"{path}: no frames in the range to restore"
                if video.start or video.end is not None
                else f"{path}: no decodable frames"
            )
        if not width:
            raise VideoError(f"{path}: no frame could be decoded")
        close_shot(count, last_t + (float(1 / src.rate) if src.rate else 0.0))
    except require_av().error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot be decoded ({_av_message(exc)})") from None
    finally:
        src.close()
    return Analysis(count, int(first_pts or 0), shots, damaged, width, height, matrix)


def _describe(shot: Shot, routing: Any, restorer: Any) -> None:
    from .engine import _routing_summary

    shot.routing = routing
    shot.degradation, shot.confidence = restorer.name_degradation(routing)
    shot.experts, shot.gates = _routing_summary(routing)


def _display_matrix(frame: Any) -> list[int] | None:
    for data in frame.side_data:
        if "DISPLAYMATRIX" in str(data.type).upper():
            raw = bytes(data)
            if len(raw) == 36:
                matrix = list(struct.unpack("<9i", raw))
                return None if matrix == [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30] else matrix
    return None


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def _pick_pix_fmt(encoder: str, codec: str, lossless: bool, input_fmt: str | None, deep: bool) -> str:
    av = require_av()
    formats = [f.name for f in (av.codec.Codec(encoder, "w").video_formats or [])]
    if lossless:
        wanted = ["gbrp16le", "rgb48le"] if deep else ["bgr0", "gbrp"]  # RGB planes: no colour conversion at all
    else:
        wanted = [input_fmt] if input_fmt else []
        wanted += ["yuv420p10le", "yuv420p"] if deep else ["yuv420p"]
    for name in wanted:
        if name and name in formats:
            return name
    return formats[0] if formats else "yuv420p"


@dataclass
class _Sink:
    """The output container and its streams, used by the writer thread only."""

    container: Any
    video: Any
    audio: dict[int, Any]  #: input stream index -> output stream
    time_base: Fraction
    pix_fmt: str
    deep: bool
    tags: dict[str, Any]
    pts_offset: int  #: subtracted from every video pts
    offset_seconds: float  #: the same shift for the audio packets
    codec: str

    @classmethod
    def open(cls, tmp: Path, suffix: str, src: _Source, analysis: Analysis, video: VideoOptions) -> _Sink:
        av = require_av()
        codec = video.output_codec(src.video.codec_context.name)
        encoder = ENCODERS[codec]
        if encoder not in av.codecs_available:
            raise VideoError(f"--video-codec {codec}: this PyAV build has no {encoder} encoder")
        out = av.open(str(tmp), "w", format=_MUXERS.get(suffix.lower(), "matroska"))
        try:
            out.metadata.update(
                {
                    k: v
                    for k, v in src.container.metadata.items()
                    if k.lower() not in ("encoder", "major_brand", "minor_version", "compatible_brands")
                }
            )
            ctx_in = src.video.codec_context
            rate = src.rate or Fraction(25)
            stream = out.add_stream(encoder, rate=rate)
            stream.width, stream.height = analysis.width, analysis.height
            pix_fmt = _pick_pix_fmt(encoder, codec, video.lossless, ctx_in.pix_fmt, src.deep)
            stream.pix_fmt = pix_fmt
            stream.time_base = src.time_base
            stream.codec_context.time_base = src.time_base
            if src.video.sample_aspect_ratio:
                stream.codec_context.sample_aspect_ratio = src.video.sample_aspect_ratio
            rgb_out = pix_fmt.startswith(("gbr", "bgr", "rgb"))
            tags = {
                "color_range": ctx_in.color_range,
                "colorspace": 0 if rgb_out else ctx_in.colorspace,
                "color_primaries": ctx_in.color_primaries,
                "color_trc": ctx_in.color_trc,
            }
            for key, value in tags.items():
                if value:
                    setattr(stream.codec_context, key, value)
            options: dict[str, str] = {}
            if codec in DEFAULT_CRF:
                options["crf"] = str(video.crf if video.crf is not None else DEFAULT_CRF[codec])
            if codec == "vp9":
                options.update({"b": "0", "row-mt": "1"})
            if codec == "hevc":
                options["x265-params"] = "log-level=error"
            if codec == "ffv1":
                options.update({"level": "3", "slicecrc": "1"})
            stream.options = options
            stream.metadata.update(
                {k: v for k, v in src.video.metadata.items() if k.lower() in ("language", "handler_name", "title")}
            )
            if analysis.display_matrix:
                stream.set_display_matrix(analysis.display_matrix)
            elif src.video.metadata.get("rotate"):
                try:
                    stream.set_display_rotation(-int(float(src.video.metadata["rotate"])))
                except ValueError:
                    pass
            audio: dict[int, Any] = {}
            for a in src.audio:
                try:
                    copy = out.add_stream_from_template(a)
                except (av.error.FFmpegError, ValueError) as exc:
                    raise VideoError(
                        f"{src.path}: its {a.codec_context.name} audio cannot be copied into {suffix} ({_av_message(exc)}); choose another container"
                    ) from None
                copy.metadata.update(
                    {k: v for k, v in a.metadata.items() if k.lower() in ("language", "handler_name", "title")}
                )
                audio[a.index] = copy
            try:
                out.start_encoding()
            except av.error.FFmpegError as exc:
                raise VideoError(f"{src.path}: cannot write {suffix} with these streams ({_av_message(exc)})") from None
        except BaseException:
            out.close()
            raise
        # A segment starts at 0 (video and audio shifted alike); a whole video keeps its timestamps as they are.
        offset = analysis.first_pts if video.start else 0
        return cls(
            out, stream, audio, src.time_base, pix_fmt, src.deep, tags, offset, float(offset * src.time_base), codec
        )


class _Writer(threading.Thread):
    """Encodes restored frames and muxes them with the copied audio packets, in the order they arrive."""

    END = object()

    def __init__(self, sink: _Sink, src: _Source, maxsize: int) -> None:
        super().__init__(name="irtool-video-write", daemon=True)
        self.sink, self.src = sink, src
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.written = 0
        self.last_pts: int | None = None
        self.last_rgb: np.ndarray | None = None
        self.waiting: list[int] = []  #: pts of damaged frames before the first restored one
        self.dropped: list[int] = []

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                raise VideoError("the video writer stopped")
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            while True:
                try:
                    item = self.queue.get(timeout=0.1)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    continue
                if self.abort.is_set():
                    return
                if item is _Writer.END:
                    self._finish()
                    return
                kind = item[0]
                if kind == "video":
                    self._frame(item[1], item[2], item[3])
                elif kind == "damaged":
                    if self.last_rgb is None:
                        self.waiting.append(item[1])
                    else:
                        self._frame(item[1], self.last_rgb)
                else:
                    self._audio(item[1])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            try:
                self.sink.container.close()
            except Exception:  # noqa: BLE001 - closing after an error must not hide it
                pass

    def _frame(self, pts: int, rgb: np.ndarray, duration: int | None = None) -> None:
        av = require_av()
        if self.waiting:
            pending, self.waiting = self.waiting, []
            for p in pending:
                self._frame(p, rgb)
        if self.last_pts is not None and pts <= self.last_pts:
            self.dropped.append(pts)  # a replacement out of order: the encoder needs increasing timestamps
            return
        sink = self.sink
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype == np.uint16 else "rgb24")
        frame = frame.reformat(
            format=sink.pix_fmt,
            dst_colorspace=sink.tags["colorspace"] or None,
            dst_color_range=sink.tags["color_range"] or None,
        )
        for key, value in sink.tags.items():
            if value:
                setattr(frame, key, value)
        frame.pts = pts - sink.pts_offset
        frame.time_base = sink.time_base
        if duration:
            frame.duration = duration
        for packet in sink.video.encode(frame):
            sink.container.mux(packet)
        self.last_pts, self.last_rgb = pts, rgb
        self.written += 1

    def _audio(self, packet: Any) -> None:
        sink = self.sink
        out = sink.audio.get(packet.stream.index)
        if out is None:
            return
        if sink.offset_seconds:
            shift = int(round(sink.offset_seconds / float(packet.time_base)))
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            if packet.pts is not None and packet.pts < 0:
                return
        packet.stream = out
        sink.container.mux(packet)

    def _finish(self) -> None:
        if self.waiting:  # nothing restored at all: cannot happen (analyse needs a decodable frame); be safe
            self.waiting = []
        for packet in self.sink.video.encode(None):
            self.sink.container.mux(packet)


# --------------------------------------------------------------------------------------------------------------------
# Restoring one video


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
    src_path: Path, dst: Path, restorer: Any, video: VideoOptions, progress: Progress | None = None
) -> VideoReport:
    """Restore one video file to `dst` (see the module docstring). Raises VideoError for an unreadable input or
    an unwritable output, KeyboardInterrupt after cleaning up (or keeping a partial file); returns the report.

    Pass 1 (`analyse`) finds the shots; pass 2 decodes again in a reader thread, restores batches of one shot's
    frames here (`_FramePass`) and encodes in a writer thread (`_Writer`) into a temp file published at the end."""
    from ..images import files as io

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
    src = _Source.open(src_path)
    report = _new_report(src_path, dst, src, analysis, restorer, video)
    tmp = _temp_beside(dst, src)
    published = False
    stop = threading.Event()
    writer: _Writer | None = None
    reader: threading.Thread | None = None
    try:
        sink = _Sink.open(tmp, dst.suffix, src, analysis, video)
        report.codec = sink.codec
        depth = max(4, 2 * options.batch_size + 4)
        writer = _Writer(sink, src, depth)
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
        writer.put(_Writer.END)
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
            writer.put(_Writer.END)
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
    src_path: Path, dst: Path, src: _Source, analysis: Analysis, restorer: Any, video: VideoOptions
) -> VideoReport:
    """The report as pass 2 starts: what pass 1 found and how the video will be restored."""
    from ..devices.policy import precision_name

    report = VideoReport(input=str(src_path), output=str(dst), width=analysis.width, height=analysis.height)
    report.routing = "per-frame" if video.route_per_frame else "shot"
    report.precision = precision_name(restorer.amp_dtype)
    report.frames, report.fps = analysis.frames, float(src.rate) if src.rate else None
    report.audio = [a.codec_context.name for a in src.audio]
    report.warnings += [f"stream #{s.index} ({s.type}) is not copied" for s in src.others]
    report.shots = analysis.shots
    return report


def _temp_beside(dst: Path, src: _Source) -> Path:
    """A new hidden temp file in `dst`'s folder, with the mode a new file gets; VideoError (closing `src`) if the
    folder cannot be written."""
    from ..images import files as io

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
    src: _Source, video: VideoOptions, stop: threading.Event, events: queue.Queue, errors: list[BaseException]
) -> None:
    """Pass 2's reader thread: decoded frames (as 8/16-bit `Image`s), damaged-frame markers and audio packets into
    `events`, then None; an exception is handed over in `errors`. Stops when `stop` is set."""
    from ..images import files as io

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                events.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for event in _events(src, video, with_audio=True, stop=stop):
            if event.kind == "frame":
                rgb = _rgb(event.frame, src.deep)  # uint8/uint16: the float copy is made in the model thread
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
        restorer: Any,
        video: VideoOptions,
        analysis: Analysis,
        src: _Source,
        writer: _Writer,
        report: VideoReport,
        progress: Progress | None,
    ) -> None:
        self.restorer, self.video, self.src, self.writer = restorer, video, src, writer
        self.report, self.progress, self.total = report, progress, analysis.frames
        self.shots = analysis.shots
        self.shot_of = _shot_index(self.shots)
        self.out_dtype = np.uint16 if src.deep else np.uint8
        self.pending: list[_Event] = []
        self.per_frame: dict[int, Counter] = {}  #: per shot: how often each expert choice was made
        self.names: dict[int, Counter] = {}  #: per shot: how often each degradation was named
        self.done = 0
        self.tiles, self.tile_size = 0, None

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

    def _batch_ends_before(self, event: _Event) -> bool:
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
        outcomes: list[Any] = []
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

    def _frame_done(self, e: _Event, outcome: Any) -> None:
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

    def finish(self, writer: _Writer) -> None:
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
    jobs: Sequence[Any], restorer: Any, video: VideoOptions, progress: Any = None
) -> Iterator[VideoReport]:
    """Restore video jobs one after the other; one failure fails that video only. `progress`: a rich Progress to
    show a bar in frames (with fps and ETA) on, or None."""
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
        task = None
        if progress is not None:
            task = progress.add_task("video", total=None, what=f"analysing {job.src.name}", rate="")
            started = [time.perf_counter(), 0.0]

            def show(phase: str, done: int, total: int | None, task=task, started=started, name=job.src.name) -> None:
                if phase == "restore" and done == 0:
                    started[0] = time.perf_counter()
                elapsed = time.perf_counter() - started[0]
                rate = f"{done / elapsed:.2f} fps" if elapsed > 0 and done else ""
                progress.update(
                    task,
                    completed=done,
                    total=total,
                    what=f"{'restoring' if phase == 'restore' else 'analysing'} {name}",
                    rate=rate,
                )

        try:
            yield restore_video(job.src, job.dst, restorer, video, show if progress is not None else None)
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
        finally:
            if task is not None:
                progress.remove_task(task)


def video_progress_columns() -> list[Any]:
    """Columns of the frame progress bar: what, bar, frames done/total, fps, elapsed, ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return [
        TextColumn("{task.fields[what]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Measuring flicker


def frame_change(path: str | Path) -> tuple[float, int]:
    """(mean absolute frame-to-frame change in 8-bit levels, frames) of a video's decoded RGB frames: the mean over
    consecutive pairs of mean |frame_t - frame_t-1| over pixels and channels. Compare a restored clip's figure
    with the clean clip's: routing flicker shows as change the content does not have."""
    src = _Source.open(Path(path))
    try:
        previous, total, pairs, frames = None, 0.0, 0, 0
        for frame in src.container.decode(src.video):
            rgb = _rgb(frame, False).astype(np.int16)
            if previous is not None:
                total += float(np.abs(rgb - previous).mean())
                pairs += 1
            previous, frames = rgb, frames + 1
        return (total / pairs if pairs else 0.0), frames
    finally:
        src.close()


# --------------------------------------------------------------------------------------------------------------------
# For the command line


def dry_run_streams(job: Any) -> list[StreamInfo] | str:
    """A video job's streams for `--dry-run`, or the one-line reason it cannot be read."""
    try:
        return probe(job.src)
    except IrtoolError as exc:
        return str(exc)


def shots_table(report: VideoReport) -> Any:
    """Per shot: frame range, time range, degradation, experts (and, routed per frame, how many routings ran)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(
            f"{report.input}: {report.frames} frames, {len(report.shots)} shot(s), routing per {'frame' if report.routing == 'per-frame' else 'shot'}"
        ),
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        box=None,
        header_style="bold",
    )
    for column in ("shot", "frames", "time", "degradation", "experts", "routings"):
        table.add_column(column, justify="right" if column in ("shot", "routings") else "left", no_wrap=True)
    for n, shot in enumerate(report.shots):
        name = shot.degradation or "-"
        if shot.confidence is not None:
            name += f" {shot.confidence:.0%}"
        experts = (
            "-"
            if not shot.experts
            else (
                " ".join("+".join(map(str, layer)) for layer in shot.experts)
                if any(len(l) > 1 for l in shot.experts)
                else "".join(str(l[0]) for l in shot.experts)
            )
        )
        table.add_row(
            str(n + 1),
            f"{shot.start}-{shot.end - 1}",
            f"{shot.start_time:.2f}-{shot.end_time:.2f}s",
            name,
            experts,
            str(shot.routings),
        )
    return table
