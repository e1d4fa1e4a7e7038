"""Builders for the restore tests: a local network that keeps the model contract, tiny checkpoints, photo-like images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from helpers import random_moce
from torch import nn

from irtool.archs.moce_ir import VARIANTS, MoCEResult, Routing
from irtool.archs.spec import ArchSpec, Capabilities, RoutingReport, Tiling


@dataclass(frozen=True)
class LocalConfig:
    seed: int = 0

    def to_dict(self) -> dict:
        return {"seed": self.seed}


class LocalNet(nn.Module):
    """A purely local network (three 3x3 convs, receptive-field radius 3) with the model contract:
    `spec` (its `LOCAL_SPEC`), `config`, `run(x, routing)` -> result with `.output` and `.routing`, `route(x)`.

    Its "routing" is one fake layer whose expert is 0 or 1 by mean brightness, so routing can be checked."""

    @property
    def spec(self) -> ArchSpec:
        return LOCAL_SPEC

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.config = LocalConfig(seed)
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(8, 3, 3, padding=1),
        )
        self.calls: list[tuple[tuple[int, ...], Routing | None]] = []

    def route(self, x: torch.Tensor) -> Routing:
        bright = (x.mean(dim=(1, 2, 3)) > 0.5).long()
        logits = torch.stack([1 - bright, bright], dim=1).float().view(-1, 1, 2)
        return Routing(experts=bright.view(-1, 1, 1), gates=torch.ones(x.shape[0], 1, 1), logits=logits)

    def run(self, x: torch.Tensor, routing: Routing | None = None, *, dense: bool = False) -> MoCEResult:
        self.calls.append((tuple(x.shape), routing))
        decided = routing if routing is not None else self.route(x)
        return MoCEResult(0.1 * self.body(x) + x, decided)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).output


LOCAL_SPEC = ArchSpec(
    name="test_local",
    title="local test network",
    detect=lambda sd: False,
    infer_config=lambda sd: LocalConfig(),
    config_from_dict=lambda d: LocalConfig(**d),
    build=lambda config: LocalNet(config.seed),
    variants={},
    capabilities=Capabilities(
        size_multiple=lambda model: 8,
        routing=RoutingReport(per_layer=True, separate=False, layer_names=lambda m: ["body"], num_experts=lambda m: 2),
        imposed_routing=True,
        tiling=Tiling(shared_routing=True),
    ),
)


def tiny_checkpoint(folder: Path, seed: int = 0, name: str = "tiny.pth") -> Path:
    """A tiny random-weight MoCE-IR saved as a plain state dict."""
    path = folder / name
    torch.save(random_moce(VARIANTS["tiny"], seed).state_dict(), path)
    return path


def photo(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with smooth gradients, edges and texture, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 6.28, 3)
    freq = rng.uniform(0.05, 0.3, 3)
    channels = [0.5 + 0.35 * np.sin(freq[c] * xx + phase[c]) * np.cos(freq[(c + 1) % 3] * yy) for c in range(3)]
    image = np.stack(channels, axis=2) * rng.uniform(0.6, 1.0) + rng.uniform(0, 0.2)
    image[height // 3 : height // 2, width // 4 : width // 2] = rng.uniform(0, 1, 3)  # a flat patch with edges
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
