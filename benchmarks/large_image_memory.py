"""Peak memory of restoring a 12000x12000 photo (issue 14): make the test image, and measure the decode and encode
phases of `irtool restore` on their own.

    python benchmarks/large_image_memory.py make big12000.png          # a photo-like 8-bit RGB PNG (about 300 MB)
    /usr/bin/time -v irtool restore big12000.png out/ --tile 512       # the whole run: "Maximum resident set size"
    /usr/bin/time -v python benchmarks/large_image_memory.py io big12000.png out.png   # decode + encode phases only

The `io` mode reads the PNG as irtool does, fills the array the tiled path (irtool/restoration/tiled_samples.py)
writes restored rows into, and encodes and writes it as irtool does, without the network, so the two phases that hold
the whole image can be measured on a machine too slow or too busy to run the network over 625 tiles.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np


def make(path: str, side: int = 12000) -> None:
    import cv2

    yy = np.linspace(0, 1, side, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, side, dtype=np.float32)[None, :]
    rng = np.random.default_rng(0)
    image = np.empty((side, side, 3), np.uint8)
    for c in range(3):  # smooth structure plus sensor-like noise, one channel at a time
        band = 0.5 + 0.3 * np.sin((c + 3) * 20 * xx + 7 * yy) * np.cos((c + 2) * 15 * yy)
        band = band + rng.normal(0, 0.03, (side, side)).astype(np.float32)
        image[..., c] = np.clip(band * 255, 0, 255).astype(np.uint8)
        del band
    cv2.imwrite(path, image)


def io_phases(src: str, dst: str) -> None:
    from irtool.images import files as io

    started = time.time()
    image = io.read_image(src)
    samples = np.empty_like(image.pixels)  # what irtool.restoration.tiled_samples fills row by row
    samples[...] = image.pixels  # stand-in content: the input itself
    io.write_image(dst, image, samples=samples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{image.width}x{image.height}: peak RSS {peak:.0f} MB, {time.time() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["make"]:
        make(sys.argv[2])
    elif sys.argv[1:2] == ["io"]:
        io_phases(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
