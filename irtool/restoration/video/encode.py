"""Encoding with PyAV: the output container and its streams (`Sink`: codec, pixel format, colour tags, display
matrix, copied audio streams) and the writer thread that encodes restored frames and muxes them with the audio."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Analysis
from .decode import Source
from .options import DEFAULT_CRF, ENCODERS, VideoError, VideoOptions, require_av
from .probe import av_message

_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


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
class Sink:
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
    def open(cls, tmp: Path, suffix: str, src: Source, analysis: Analysis, video: VideoOptions) -> Sink:
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
                        f"{src.path}: its {a.codec_context.name} audio cannot be copied into {suffix} ({av_message(exc)}); choose another container"
                    ) from None
                copy.metadata.update(
                    {k: v for k, v in a.metadata.items() if k.lower() in ("language", "handler_name", "title")}
                )
                audio[a.index] = copy
            try:
                out.start_encoding()
            except av.error.FFmpegError as exc:
                raise VideoError(f"{src.path}: cannot write {suffix} with these streams ({av_message(exc)})") from None
        except BaseException:
            out.close()
            raise
        # A segment starts at 0 (video and audio shifted alike); a whole video keeps its timestamps as they are.
        offset = analysis.first_pts if video.start else 0
        return cls(
            out, stream, audio, src.time_base, pix_fmt, src.deep, tags, offset, float(offset * src.time_base), codec
        )


class Writer(threading.Thread):
    """Encodes restored frames and muxes them with the copied audio packets, in the order they arrive."""

    END = object()

    def __init__(self, sink: Sink, src: Source, maxsize: int) -> None:
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
                if item is Writer.END:
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
