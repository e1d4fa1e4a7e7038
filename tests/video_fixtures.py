"""Synthetic clips for the video tests, made with PyAV: a moving pattern with noise or rain, two shots (a dark
blue-green scene, then a bright red-yellow one), an audio track (a tone), optional variable frame rate."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def scene(index: int, height: int, width: int, shot: int) -> np.ndarray:
    """The clean frame `index` of a shot: a pattern drifting 1 px per frame, float RGB in [0, 1]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x = xx + index
    if shot == 0:
        base = np.stack(
            [0.15 + 0.1 * np.sin(x / 5), 0.3 + 0.15 * np.sin(yy / 4 + x / 9), 0.4 + 0.2 * np.cos(x / 7)], axis=2
        )
    else:
        base = np.stack(
            [0.8 + 0.15 * np.sin(x / 6), 0.65 + 0.2 * np.cos(yy / 5 - x / 8), 0.2 + 0.1 * np.sin(x / 4)], axis=2
        )
    return np.clip(base, 0, 1)


def degraded(clean: np.ndarray, rng: np.random.Generator, kind: str = "noise", sigma: float = 0.08) -> np.ndarray:
    if kind == "rain":
        out = clean.copy()
        h, w = clean.shape[:2]
        for _ in range(max(1, h * w // 200)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w)
            out[y : y + 4, x] = np.minimum(1.0, out[y : y + 4, x] + 0.5)
        return out
    return np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1)


def make_clip(
    path: Path,
    frames: tuple[int, ...] = (8, 8),
    size: tuple[int, int] = (32, 48),
    fps: int = 12,
    codec: str = "libx264",
    kind: str = "noise",
    audio: bool = True,
    vfr: bool = False,
    rotation: int = 0,
    clean: bool = False,
    seed: int = 0,
    options: dict | None = None,
    sigma: float = 0.08,
) -> Path:
    """Write a clip: `frames` per shot, (H, W) `size`; with `vfr` every third frame lasts twice as long."""
    import av

    rng = np.random.default_rng(seed)
    height, width = size
    out = av.open(str(path), "w")
    v = out.add_stream(codec, rate=fps)
    v.width, v.height = width, height
    v.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    v.time_base = Fraction(1, fps * 10)
    v.codec_context.time_base = Fraction(1, fps * 10)
    v.options = options or ({"crf": "12", "bf": "0" if vfr else "2"} if codec == "libx264" else {})
    v.codec_context.color_range = 1  # limited ("tv")
    v.codec_context.colorspace = 1  # bt709
    v.codec_context.color_primaries = 1
    v.codec_context.color_trc = 1
    if rotation:
        v.set_display_rotation(rotation)
    a = None
    if audio:
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
    pts = 0
    for shot, n in enumerate(frames):
        for i in range(n):
            pixels = (
                scene(i, height, width, shot) if clean else degraded(scene(i, height, width, shot), rng, kind, sigma)
            )
            frame = av.VideoFrame.from_ndarray(np.round(pixels * 255).astype(np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
            frame.color_range, frame.colorspace = 1, 1
            frame.pts = pts
            frame.time_base = v.codec_context.time_base
            pts += 20 if vfr and i % 3 == 2 else 10
            for packet in v.encode(frame):
                out.mux(packet)
    for packet in v.encode():
        out.mux(packet)
    if a is not None:
        seconds = pts / (fps * 10)
        samples = int(seconds * 16000)
        t = np.arange(samples) / 16000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024]
            af = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            af.sample_rate = 16000
            af.pts = start
            for packet in a.encode(af):
                out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    out.close()
    return path


def frame_times(path: Path) -> list[float]:
    """Presentation times (s) of the decoded video frames."""
    import av

    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(c.streams.video[0])]


def audio_packets(path: Path) -> list[tuple[int | None, bytes]]:
    """(pts, payload) of every audio packet: equal lists mean the audio was copied, not re-encoded."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        s = c.streams.audio[0]
        return [
            (round(float(p.pts * p.time_base), 4) if p.pts is not None else None, bytes(p))
            for p in c.demux(s)
            if p.size
        ]
