"""Shots: the cut detector and one routing per shot.

A cut is where the colour histograms of consecutive frames differ by more than `cut_threshold`: each frame is shrunk
to `HIST_WIDTH` px wide, each RGB channel binned into 16 bins, and the score is half the L1 distance of the
normalised histograms averaged over the channels (0 = same colours, 1 = no colour in common). Histograms ignore
motion and average away noise and rain streaks, so a moving camera or a rainy frame is not a cut; a shot is at least
`MIN_SHOT_FRAMES` long, so a flash does not make two cuts. Numpy only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ...archs.spec import RoutingRecord


MIN_SHOT_FRAMES = 4


HIST_WIDTH, HIST_BINS = 96, 16


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """(3, bins) normalised per-channel histograms of a (small) uint8 RGB frame."""
    hist = np.stack([np.bincount(rgb[..., c].ravel() >> 4, minlength=HIST_BINS) for c in range(3)]).astype(np.float64)
    return hist / max(1, rgb.shape[0] * rgb.shape[1])


def cut_score(previous: np.ndarray, current: np.ndarray) -> float:
    """0 (same colours) .. 1 (no colour in common): half the L1 distance of the histograms, mean over channels."""
    return float(0.5 * np.abs(previous - current).sum(axis=1).mean())


@dataclass
class Shot:
    """Frames [start, end) of the restored range that share one routing."""

    start: int
    end: int
    start_time: float = 0.0  #: seconds from the start of the video stream
    end_time: float = 0.0
    samples: list[int] = field(default_factory=list)  #: the frames its routing was decided on
    routing: RoutingRecord | None = None
    degradation: str | None = None
    confidence: float | None = None
    experts: list[list[int]] | None = None
    gates: list[list[float]] | None = None
    routings: int = 1  #: distinct routings its frames ran with (1 with shot routing)

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": [self.start, self.end],
            "time": [round(self.start_time, 4), round(self.end_time, 4)],
            "degradation": self.degradation,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "experts": self.experts,
            "gates": None if self.gates is None else [[round(g, 4) for g in layer] for layer in self.gates],
            "routings": self.routings,
            "samples": self.samples,
        }


class Sampler:
    """Frames of one shot kept for routing: every `stride`-th, the stride doubling whenever more than twice the
    wanted number are kept, so a shot of any length holds at most 2n+1 frames."""

    def __init__(self, n: int) -> None:
        self.n, self.stride, self.kept = n, 1, []  # type: ignore[var-annotated]

    def offer(self, k: int, make: Callable[[], np.ndarray]) -> None:
        if k % self.stride:
            return
        self.kept.append((k, make()))
        if len(self.kept) > 2 * self.n:
            self.kept = self.kept[::2]
            self.stride *= 2

    def pick(self) -> list[tuple[int, np.ndarray]]:
        m = len(self.kept)
        if m <= self.n:
            return list(self.kept)
        return [self.kept[min(m - 1, int((i + 0.5) * m / self.n))] for i in range(self.n)]


def shared_routing(routing: RoutingRecord) -> RoutingRecord:
    """One routing (batch 1) for a shot from the routing of its sample frames: each routing type's `consensus()`
    (MoCE-IR: per layer, the mean of the frames' router probabilities, so that the routing calibration names the shot
    from the mean routing signature; LoRA-IR: mean class logits and prior)."""
    return routing.consensus()
