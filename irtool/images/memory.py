"""How much of this machine's memory an image may take, decided before anything is decoded.

Two figures, both from the memory available now (MemAvailable, capped by a cgroup limit when there is one):

- `default_max_megapixels()`: the largest image irtool accepts by default. Large images are restored in tiles straight
  from their decoded 8/16-bit samples (see irtool.restoration), which holds at most `TILED_BYTES_PER_PIXEL` per pixel
  (the file's bytes, the decoded input, the restored output and its encoded file); half of the available memory at
  that rate is the limit. `--max-megapixels` changes it.
- `whole_image_pixels()`: the largest image restored in one piece. A whole-image pass holds float32 copies of input
  and output and the network's activations (`WHOLE_BYTES_PER_PIXEL`); above a quarter of the available memory at
  that rate, images go through the tiled path even without `--tile`.

Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: bytes per pixel held by the tiled path at its peak: a 16-bit RGBA file's bytes (8), its decoded samples (8),
#: the restored samples (8); an 8-bit RGB image needs a third of that
TILED_BYTES_PER_PIXEL = 24
#: bytes per pixel of a whole-image pass of the float32 pipeline: input and output as float32 on both sides of the
#: network (4 x 12) and the network's live activations (a 32-48 channel trunk at full resolution: about 1.5 KB,
#: measured with the built-in model at 1 MP: see benchmarks/)
WHOLE_BYTES_PER_PIXEL = 2048
#: used when the available memory cannot be read
FALLBACK_BYTES = 4 << 30


def _cgroup_limit() -> int | None:
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def available_bytes() -> int:
    """Memory available to this process now, in bytes."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = FALLBACK_BYTES
    limit = _cgroup_limit()
    return min(found, limit) if limit else found


def default_max_megapixels() -> float:
    """The default `--max-megapixels`: half the available memory at the tiled path's bytes per pixel."""
    return max(1.0, float(int(available_bytes() * 0.5 / TILED_BYTES_PER_PIXEL / 1e6)))


def whole_image_pixels() -> int:
    """The largest pixel count restored in one piece (above it: tiles), from a quarter of the available memory."""
    return max(1 << 20, int(available_bytes() * 0.25 / WHOLE_BYTES_PER_PIXEL))
