"""Pass 1 (decode only): cut detection, frame count, damaged frames, and each shot's routing.

Each shot's routing is decided once: `route_samples` frames spread evenly across the shot (kept with a stride that
doubles as the shot grows, so memory stays bounded) are routed at `--route-size`, as the engine routes a tiled
image, and their router probabilities averaged per layer; the top-k of that average are the shot's experts and
gates."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .decode import Source, decode_events, routing_rgb, to_rgb
from .options import VideoError, VideoOptions, require_av
from .probe import av_message
from .shots import HIST_WIDTH, MIN_SHOT_FRAMES, Sampler, Shot, colour_histogram, cut_score, shared_routing

if TYPE_CHECKING:
    from ...archs.spec import RoutingRecord
    from ..engine import Restorer


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


def analyse(
    path: Path, restorer: Restorer, video: VideoOptions, progress: Callable[[int], None] | None = None
) -> Analysis:
    """Pass 1: decode the restored range once, find the cuts, count frames, and (shot routing) route each shot."""
    from ...images.tensors import to_tensor

    src = Source.open(path)
    shots: list[Shot] = []
    damaged: list[int] = []
    matrix: list[int] | None = None
    width = height = 0
    try:
        previous = None
        shot_start, shot_time, sampler = 0, 0.0, Sampler(video.route_samples)
        route_hw: tuple[int, int] | None = None
        count, first_pts, last_t = 0, None, 0.0

        def close_shot(end: int, end_time: float) -> None:
            shots.append(Shot(shot_start, end, shot_time, end_time))
            picked = sampler.pick()
            if not video.route_per_frame and picked:
                shots[-1].samples = [shot_start + k for k, _ in picked]
                batch = to_tensor(np.stack([a for _, a in picked]), restorer.device)
                routing = restorer.route(batch)
                describe(shots[-1], shared_routing(routing), restorer)

        for event in decode_events(src, video, with_audio=False):
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
                small = to_rgb(frame, False, HIST_WIDTH, max(2, round(HIST_WIDTH * frame.height / max(1, frame.width))))
                hist = colour_histogram(small)
                if (
                    previous is not None
                    and event.index - shot_start >= MIN_SHOT_FRAMES
                    and cut_score(previous, hist) > video.cut_threshold
                ):
                    close_shot(event.index, t)
                    shot_start, shot_time, sampler = event.index, t, Sampler(video.route_samples)
                previous = hist
                if not video.route_per_frame:
                    h, w = route_hw  # type: ignore[misc]
                    sampler.offer(event.index - shot_start, functools.partial(routing_rgb, frame, src.deep, h, w))
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
        raise VideoError(f"{path}: cannot be decoded ({av_message(exc)})") from None
    finally:
        src.close()
    return Analysis(count, int(first_pts or 0), shots, damaged, width, height, matrix)


def describe(shot: Shot, routing: RoutingRecord, restorer: Restorer) -> None:
    from ..engine import _routing_summary

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
