"""Flicker of shot routing vs per-frame routing, on a synthetic clip whose degradation is constant.

A clean clip (a drifting pattern, one shot) gets fresh Gaussian noise of one level on every frame; irtool restores
it twice with the built-in model (or --model/--weights), losslessly (FFV1), once with one routing per shot (the
default) and once with --route-per-frame. Flicker = mean absolute frame-to-frame change of the decoded RGB frames
in 8-bit levels (irtool.restoration.video.decode.frame_change); the clean clip's figure is the change the content
itself has.

    python benchmarks/video_flicker.py --frames 36 --size 144x256 --sigma 0.1

Prints a table and JSON.
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


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 24) -> None:
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("ffv1", rate=fps)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "bgr0"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)


def main() -> None:
    from irtool.restoration.video.decode import frame_change

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--size", default="144x256", help="HxW")
    parser.add_argument("--sigma", type=float, default=0.1, help="noise standard deviation (0..1)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/irtool-flicker"))
    parser.add_argument("extra", nargs="*", help="more irtool restore options (after --), e.g. --model NAME")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    clean, noisy = [], []
    for i in range(args.frames):
        x = xx + 2 * i
        base = np.stack(
            [0.45 + 0.25 * np.sin(x / 11), 0.5 + 0.2 * np.sin(yy / 9 + x / 23), 0.4 + 0.25 * np.cos(x / 17)], axis=2
        )
        clean.append(np.round(np.clip(base, 0, 1) * 255).astype(np.uint8))
        noisy.append(np.round(np.clip(base + rng.normal(0, args.sigma, base.shape), 0, 1) * 255).astype(np.uint8))
    write_clip(args.workdir / "clean.mkv", clean)
    write_clip(args.workdir / "noisy.mkv", noisy)
    rows = {
        "clean clip": frame_change(args.workdir / "clean.mkv")[0],
        "degraded input": frame_change(args.workdir / "noisy.mkv")[0],
    }
    details = {}
    for name, flags in (("shot routing (default)", []), ("--route-per-frame", ["--route-per-frame"])):
        out = args.workdir / ("frame" if flags else "shot")
        command = [
            sys.executable,
            "-m",
            "irtool",
            "restore",
            str(args.workdir / "noisy.mkv"),
            str(out),
            "--lossless",
            "--overwrite",
            "--json",
            "-q",
            *flags,
            *args.extra,
        ]
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        report = json.loads(run.stdout.splitlines()[-1])
        rows[name] = frame_change(out / "noisy.mkv")[0]
        details[name] = {"seconds": round(time.perf_counter() - started, 1), "shots": report["video"]["shots"]}
    print(f"flicker (mean |frame_t - frame_t-1|, 8-bit levels), {args.frames} frames {w}x{h}, noise sigma {args.sigma}")
    for name, value in rows.items():
        print(f"  {name:24} {value:7.3f}")
    print(json.dumps({"flicker": {k: round(v, 3) for k, v in rows.items()}, "runs": details}))


if __name__ == "__main__":
    main()
