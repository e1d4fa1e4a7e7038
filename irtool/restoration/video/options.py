"""What `irtool restore` can be told about videos (`VideoOptions`), the codecs and containers irtool writes, and
the one error type. No torch; PyAV is imported by `require_av` when a video is opened."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import IrtoolError
from ..planning import VIDEO_SUFFIXES

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


CUT_THRESHOLD = 0.35


ROUTE_SAMPLES = 5


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
