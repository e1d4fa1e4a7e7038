"""End-to-end video check: a 10-second 1280x720 clip (two shots of a drifting pattern under rain, 48 kHz stereo
AAC audio) restored by `irtool restore` with the built-in model, then checked: same frame count, same frame
timestamps, same resolution and duration, and the audio stream copied packet for packet.

    python benchmarks/video_720p.py --fps 10 --workdir /tmp/irtool-720p [-- extra irtool restore options]

Prints the wall time of the restore and the checks as JSON; exits 1 if a check fails. (On a CPU the built-in
model takes seconds per 720p frame, so the default frame rate is 10 fps: 100 frames.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def make_clip(path: Path, seconds: float, fps: int, width: int, height: int, seed: int = 0) -> None:
    import av

    rng = np.random.default_rng(seed)
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    v.options = {"crf": "18", "preset": "fast"}
    v.codec_context.color_range, v.codec_context.colorspace = 1, 1
    v.codec_context.color_primaries, v.codec_context.color_trc = 1, 1
    a = out.add_stream("aac", rate=48000)
    a.layout = "stereo"
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = int(seconds * fps)
    for i in range(frames):
        shot = 0 if i < frames // 2 else 1
        x = xx + 4 * i
        if shot == 0:
            base = np.stack(
                [0.25 + 0.15 * np.sin(x / 23), 0.35 + 0.2 * np.sin(yy / 17 + x / 41), 0.45 + 0.2 * np.cos(x / 31)],
                axis=2,
            )
        else:
            base = np.stack(
                [0.7 + 0.2 * np.sin(x / 29), 0.55 + 0.2 * np.cos(yy / 19 - x / 37), 0.3 + 0.15 * np.sin(x / 13)], axis=2
            )
        rain = np.zeros((height, width), np.float32)
        ys, xs = rng.integers(0, height - 24, 1500), rng.integers(0, width - 8, 1500)
        for dy in range(24):
            rain[ys + dy, xs + dy // 4] = 0.45
        pixels = np.clip(base + rain[..., None], 0, 1)
        frame = av.VideoFrame.from_ndarray(np.round(pixels * 255).astype(np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in v.encode(frame):
            out.mux(packet)
    for packet in v.encode():
        out.mux(packet)
    samples = int(seconds * 48000)
    t = np.arange(samples) / 48000
    tone = np.stack([0.2 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    for start in range(0, samples, 1024):
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="stereo"
        )
        af.sample_rate, af.pts = 48000, start
        for packet in a.encode(af):
            out.mux(packet)
    for packet in a.encode():
        out.mux(packet)
    out.close()


def streams(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [round(float(f.pts * f.time_base), 6) for f in c.decode(v)]
        size = (v.codec_context.width, v.codec_context.height)
    with av.open(str(path)) as c:
        audio = [(p.pts, p.dts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]
        duration = c.duration / 1e6 if c.duration else None
    return {"times": times, "size": size, "audio": audio, "duration": duration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/irtool-720p"))
    parser.add_argument("extra", nargs="*", help="more irtool restore options (after --)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    clip, out = args.workdir / "clip720p.mp4", args.workdir / "out"
    make_clip(clip, args.seconds, args.fps, 1280, 720)
    command = [
        sys.executable,
        "-m",
        "irtool",
        "restore",
        str(clip),
        str(out),
        "--overwrite",
        "--json",
        "--device",
        "cpu",
        *args.extra,
    ]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        raise SystemExit(f"irtool restore failed with status {run.returncode}")
    report = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
    before, after = streams(clip), streams(out / clip.name)
    checks = {
        "frames_equal": len(before["times"]) == len(after["times"]),
        "timestamps_equal": before["times"] == after["times"],
        "size_equal": before["size"] == after["size"],
        "duration_equal": before["duration"] is not None
        and after["duration"] is not None
        and abs(before["duration"] - after["duration"]) < 1.0 / args.fps,
        "audio_packets_identical": before["audio"] == after["audio"],
    }
    print(
        json.dumps(
            {
                "command": " ".join(["irtool", *command[3:]]),
                "wall_seconds": round(wall, 1),
                "frames": len(after["times"]),
                "frames_per_second": round(len(after["times"]) / wall, 3),
                "duration": [before["duration"], after["duration"]],
                "audio_packets": len(after["audio"]),
                "shots": [{k: s[k] for k in ("frames", "degradation", "experts")} for s in report["video"]["shots"]],
                "checks": checks,
            },
            indent=1,
        )
    )
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
