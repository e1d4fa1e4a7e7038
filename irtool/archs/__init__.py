"""The networks irtool knows, as one literal catalogue: name -> how to detect, configure and build it.

Detection order matters only if two signatures could both match; they cannot today. Imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from . import moce_ir


@dataclass(frozen=True)
class ArchSpec:
    name: str  #: catalogue key, also stored in converted checkpoints ("moce_ir")
    title: str  #: how people write it ("MoCE-IR")
    detect: Callable[[Mapping[str, Tensor]], bool]
    infer_config: Callable[[Mapping[str, Tensor]], Any]
    config_from_dict: Callable[[Mapping[str, Any]], Any]
    build: Callable[[Any], nn.Module]
    variants: Mapping[str, Any]


ARCHS: dict[str, ArchSpec] = {
    "moce_ir": ArchSpec(
        name="moce_ir",
        title="MoCE-IR",
        detect=moce_ir.detect,
        infer_config=moce_ir.infer_config,
        config_from_dict=moce_ir.MoCEIRConfig.from_dict,
        build=moce_ir.MoCEIR,
        variants=moce_ir.VARIANTS,
    ),
}


def build(arch: str, config: Any) -> nn.Module:
    """A fresh network (random weights) of architecture `arch` with `config` (a config object or a variant name)."""
    spec = ARCHS[arch]
    if isinstance(config, str):
        config = spec.variants[config]
    return spec.build(config)
