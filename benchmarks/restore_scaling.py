"""Throughput of `irtool restore` on 1 and on 2 processes of 1 thread each (CPU), side by side in one run.

    python benchmarks/restore_scaling.py [--images 24] [--size 192] [--repeats 3] [--weights FILE]

Writes `--images` photo-like test images of `--size`² px into a temp folder, then alternates (1, 2, 1, 2, ...)
`irtool restore IN OUT --device cpu` in one process with `OMP_NUM_THREADS=1` and `irtool restore IN OUT --gpu 0,1
--device cpu` (two worker processes of one thread each, started by irtool's own launcher, as torchrun would).
Without --weights it restores with irtool's built-in default model (a 1.5M-parameter MoCE-IR).

Prints, per setup, the median images/s over the repeats two ways: "steady" counts from rank 0's own summary line
(model loaded, processes started: what a long run sees) and "end to end" from the whole command's wall time
(process start-up, torch import, rendezvous and model load included: what a short run sees). The ratio 2p/1p is the
scaling. The machine's load average before and after is printed: on a shared machine, the cores the two processes
need may be busy with other work.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photo(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    channels = [
        0.5 + 0.35 * np.sin(rng.uniform(0.02, 0.2) * xx + rng.uniform(0, 6.3)) * np.cos(rng.uniform(0.02, 0.2) * yy)
        for _ in range(3)
    ]
    image = np.stack(channels, axis=2) + rng.normal(0, 0.04, (size, size, 3))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def run(inputs: Path, out: Path, processes: int, weights: str | None) -> tuple[float, float, int]:
    """(steady seconds, end-to-end seconds, images restored) of one `irtool restore`."""
    cmd = [sys.executable, "-m", "irtool", "restore", str(inputs), str(out), "--device", "cpu"]
    if processes > 1:
        cmd += ["--gpu", ",".join(str(i) for i in range(processes))]
    if weights:
        cmd += ["--weights", weights]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = re.search(r"restored (\d+) of (\d+) images in ([\d.]+)s", result.stderr)
    if result.returncode != 0 or summary is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return float(summary.group(3)), wall, int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=None, help="checkpoint (default: the built-in default model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="irtool-scaling-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for i in range(args.images):
            Image.fromarray(photo(args.size, i)).save(inputs / f"{i:03d}.png")
        load_before = os.getloadavg()[0]
        times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        run(inputs, Path(tmp) / "warm", 1, args.weights)  # warm the file cache and the import caches
        for k in range(args.repeats):
            for processes in (1, 2):
                steady, wall, n = run(inputs, Path(tmp) / f"out{k}-{processes}", processes, args.weights)
                assert n == args.images
                times[processes].append((steady, wall))
                print(
                    f"repeat {k + 1}, {processes} process(es): {n / steady:.2f} images/s steady, {n / wall:.2f} end to end",
                    flush=True,
                )
        load_after = os.getloadavg()[0]

    print(
        f"\n{args.images} images of {args.size}x{args.size} px, 1 thread per process, load1 {load_before:.2f} -> {load_after:.2f}, {os.cpu_count()} cores"
    )
    print("| processes | images/s steady (median) | images/s end to end (median) |")
    print("|---:|---:|---:|")
    rates = {}
    for processes, pairs in times.items():
        steady = statistics.median(args.images / s for s, _ in pairs)
        wall = statistics.median(args.images / w for _, w in pairs)
        rates[processes] = (steady, wall)
        print(f"| {processes} | {steady:.2f} | {wall:.2f} |")
    print(f"| 2 / 1 | {rates[2][0] / rates[1][0]:.2f}x | {rates[2][1] / rates[1][1]:.2f}x |")


if __name__ == "__main__":
    main()
