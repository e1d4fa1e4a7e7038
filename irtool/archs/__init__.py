"""The networks irtool knows: one file per architecture, each ending with its `SPEC` (see `spec.ArchSpec`), and this
registry of them. Adding an architecture is its file plus one line below.

Detection tries the specs in this order; it matters only if two signatures could both match (they cannot today).
LoRA-IR is two entries, one per released file (restoration network, CLIP router); `irtool.load_model` joins them as
`lora_ir.SPEC.join` says. Imports torch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import adair, bioir, clip_router, lora_ir, moce_ir
from .spec import ArchSpec, Capabilities, Classifier, Join, RoutingRecord, RoutingReport, Tiling, spec_of

SPECS: tuple[ArchSpec, ...] = (
    moce_ir.SPEC,
    lora_ir.SPEC,
    clip_router.SPEC,
    bioir.SPEC,
    adair.SPEC,
)

ARCHS: dict[str, ArchSpec] = {spec.name: spec for spec in SPECS}

__all__ = [
    "ARCHS",
    "SPECS",
    "ArchSpec",
    "Capabilities",
    "Classifier",
    "Join",
    "RoutingRecord",
    "RoutingReport",
    "Tiling",
    "build",
    "spec_of",
]


def build(arch: str, config: Any) -> nn.Module:
    """A fresh network (random weights) of architecture `arch` with `config` (a config object or a variant name)."""
    spec = ARCHS[arch]
    if isinstance(config, str):
        config = spec.variants[config]
    return spec.build(config)
