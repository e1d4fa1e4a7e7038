"""The networks irtool knows, as one literal catalogue: name -> how to detect, configure and build it.

Detection order matters only if two signatures could both match; they cannot today. LoRA-IR is two entries, one per
released file (restoration network, CLIP router); `irtool.load_model` joins them. Imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from . import clip_router, lora_ir, moce_ir


@dataclass(frozen=True)
class ArchSpec:
    name: str  #: catalogue key, also stored in converted checkpoints ("moce_ir")
    title: str  #: how people write it ("MoCE-IR")
    detect: Callable[[Mapping[str, Tensor]], bool]
    infer_config: Callable[[Mapping[str, Tensor]], Any]
    config_from_dict: Callable[[Mapping[str, Any]], Any]
    build: Callable[[Any], nn.Module]
    variants: Mapping[str, Any]
    #: keys some checkpoints carry that hold nothing this network needs (dropped before the strict load)
    obsolete_keys: tuple[str, ...] = ()
    #: config fields that change the outputs but leave no trace in the tensors: detection can only assume them
    #: (the released value when the shapes are a released variant's), so a caller may state them
    unseen_fields: tuple[str, ...] = ()


ARCHS: dict[str, ArchSpec] = {
    "moce_ir": ArchSpec(
        name="moce_ir",
        title="MoCE-IR",
        detect=moce_ir.detect,
        infer_config=moce_ir.infer_config,
        config_from_dict=moce_ir.MoCEIRConfig.from_dict,
        build=moce_ir.MoCEIR,
        variants=moce_ir.VARIANTS,
        unseen_fields=moce_ir.UNSEEN_FIELDS,
    ),
    # LoRA-IR comes as two files: the restoration network and its CLIP router (`irtool.load_model` joins them).
    "lora_ir": ArchSpec(
        name="lora_ir",
        title="LoRA-IR",
        detect=lora_ir.detect,
        infer_config=lora_ir.infer_config,
        config_from_dict=lora_ir.LoRAIRNetConfig.from_dict,
        build=lora_ir.LoRAIRNet,
        variants=lora_ir.VARIANTS,
        unseen_fields=lora_ir.UNSEEN_FIELDS,
    ),
    "clip_router": ArchSpec(
        name="clip_router",
        title="LoRA-IR CLIP router",
        detect=clip_router.detect,
        infer_config=clip_router.infer_config,
        config_from_dict=clip_router.CLIPRouterConfig.from_dict,
        build=clip_router.CLIPRouter,
        variants=clip_router.VARIANTS,
        obsolete_keys=clip_router.OBSOLETE_KEYS,
        unseen_fields=clip_router.UNSEEN_FIELDS,
    ),
}


def build(arch: str, config: Any) -> nn.Module:
    """A fresh network (random weights) of architecture `arch` with `config` (a config object or a variant name)."""
    spec = ARCHS[arch]
    if isinstance(config, str):
        config = spec.variants[config]
    return spec.build(config)
