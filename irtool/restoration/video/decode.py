"""Decoding with PyAV: an open input (`Source`), its frames as 8/16-bit RGB, and the events of a restored range
(frames, damaged frames, audio packets) in order; and `frame_change`, the flicker measure."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .options import VideoOptions, require_av
from .probe import av_message, frame_rate, open_video


def _bits(pix_fmt: str | None) -> int:
    av = require_av()
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt or "yuv420p").components)
    except (ValueError, av.error.FFmpegError):
        return 8


@dataclass
class Source:
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
    def open(cls, path: Path) -> Source:
        container = open_video(path)
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
            frame_rate(video),
            _bits(video.codec_context.pix_fmt) > 8,
        )

    def close(self) -> None:
        self.container.close()

    def seconds(self, pts: int | None) -> float:
        """Seconds from the restored range's start; an event without a timestamp (never a frame) counts as 0."""
        return 0.0 if pts is None else float((pts - self.first_pts) * self.time_base)


def routing_rgb(frame: Any, deep: bool, height: int, width: int) -> np.ndarray:
    """A frame as `to_rgb` makes it, scaled to the routing size (height, width) unless it has that size already."""
    resize = (height, width) != (frame.height, frame.width)
    return to_rgb(frame, deep, width if resize else None, height if resize else None)


def to_rgb(frame: Any, deep: bool, width: int | None = None, height: int | None = None) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 (uint16 when deep) RGB, using the frame's own colour matrix and range."""
    return frame.to_ndarray(
        format="rgb48le" if deep else "rgb24",
        width=width,
        height=height,
        src_color_range=frame.color_range or None,
        interpolation="AREA" if width else None,
    )


@dataclass
class Event:
    kind: str  #: frame, damaged, audio
    index: int = -1  #: frame number within the restored range
    pts: int | None = None
    frame: Any = None
    packet: Any = None
    error: str | None = None
    duration: int | None = None  #: in the stream's time base, when the decoder knows it (keeps the last frame's)


def decode_events(
    src: Source, video: VideoOptions, with_audio: bool, stop: threading.Event | None = None
) -> Iterator[Event]:
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
                    yield Event("audio", packet=packet)
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
            yield Event("damaged", index, pts, error=av_message(exc))
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
                yield Event("damaged", index, pts, error="the decoder marked the frame corrupt")
            else:
                yield Event("frame", index, pts, frame=frame, duration=frame.duration or None)
            index, last_pts = index + 1, pts


def frame_change(path: str | Path) -> tuple[float, int]:
    """(mean absolute frame-to-frame change in 8-bit levels, frames) of a video's decoded RGB frames: the mean over
    consecutive pairs of mean |frame_t - frame_t-1| over pixels and channels. Compare a restored clip's figure
    with the clean clip's: routing flicker shows as change the content does not have."""
    src = Source.open(Path(path))
    try:
        previous, total, pairs, frames = None, 0.0, 0, 0
        for frame in src.container.decode(src.video):
            rgb = to_rgb(frame, False).astype(np.int16)
            if previous is not None:
                total += float(np.abs(rgb - previous).mean())
                pairs += 1
            previous, frames = rgb, frames + 1
        return (total / pairs if pairs else 0.0), frames
    finally:
        src.close()
