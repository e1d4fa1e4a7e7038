"""Splitting a run across processes, without torch: who this process is, and which images it takes.

Under torchrun (or `irtool restore --gpu 0,1,...`) every process plans the same job list; `balance` then gives each
rank a share of equal pixel count, not of equal file count: one 50 MP photo must not sit on the same rank as a
thousand thumbnails. The assignment is greedy longest-processing-time (largest image first, onto the rank with the
least pixels so far; ties go to the rank with fewer images, then the lower rank), so it is the same on every node.

Imports the standard library and Pillow (for image headers) only.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from .errors import IrtoolError


def world_size() -> int:
    """How many processes the launcher started (1 without one). Cheap: the CLI asks before importing torch."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def where() -> str:
    """ "rank 3 (host node7)": how messages name a process."""
    return f"rank {rank()} (host {socket.gethostname()})"


def pixel_count(path: Path | str | None) -> int:
    """Width x height from the file's header (no decoding); 0 when the header cannot be read (the job will fail fast)."""
    if path is None:
        return 0
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - any unreadable header: the restore itself reports why
        return 0
    return int(w) * int(h)


def balance(
    weights: Sequence[int], world: int, loads: list[int] | None = None, counts: list[int] | None = None
) -> list[int]:
    """The rank (0..world-1) of each item: greedy longest-processing-time on `weights` (pixels), deterministic.

    An item of weight 0 (unreadable header) counts as 1, so broken files spread by count instead of piling up.
    `loads`/`counts` (pixels and items per rank so far) carry the balance across several calls (eval's datasets)
    and are updated in place.
    """
    if world < 1:
        raise ValueError("world must be >= 1")
    loads = [0] * world if loads is None else loads
    counts = [0] * world if counts is None else counts
    owner = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (loads[r], counts[r], r))
        owner[i] = r
        loads[r] += max(1, int(weights[i]))
        counts[r] += 1
    return owner


def parse_gpus(text: str | None) -> list[int] | None:
    """`--gpu`: None; "2" -> [2]; "0,1,3" -> [0, 1, 3]; "all" -> every visible GPU (needs torch to count)."""
    if text is None:
        return None
    text = text.strip().lower()
    if text == "all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise IrtoolError("--gpu all: this machine has no CUDA GPU")
        return list(range(count))
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IrtoolError(f"--gpu {text}: a GPU number, a comma-separated list (0,1,3) or all") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise IrtoolError(f"--gpu {text}: a GPU number, a comma-separated list of distinct numbers (0,1,3) or all")
    return gpus
