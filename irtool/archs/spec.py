"""What an architecture tells the rest of irtool about itself: `ArchSpec`, one per network file (its `SPEC`).

Code outside irtool/archs never asks a model what it can do by probing its attributes. It reads the model's spec
(`spec_of(model)`): how to detect, configure and build the network, and a typed `Capabilities` record (the size
multiple the engine pads to, what one pass's routing looks like, a dense mode, imposed routing, a built-in degradation
classifier, tiling, the reference path, the parts of a time breakdown). A routing, whatever the network, is a
`RoutingRecord`. A two-file model (LoRA-IR: restoration network + CLIP router) says in its `Join` which companion
spec holds the second file and how the two become one model.

The model contract every architecture's model class keeps: a `spec` property (this architecture's `SPEC`), a
`config` with `to_dict()`, `run(x, routing=None, *, dense=False) -> result with .output and .routing` for H and W
multiples of the size multiple (anything else is refused through `require_multiple`: the aligned path the engine
and the tests use), `forward(x, routing=None, *, dense=False)` that restores any H x W to H x W
(`return run_padded(self, x, routing=routing, dense=dense).output`: padded by the spec's one padding rule, cropped
back), and `route(x)` when `capabilities.routing` says it routes.
Imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: how an image is padded to the size multiple: mirrored (MoCE-IR) or with zeros (LoRA-IR, NAFNet's `check_image_size`)
Padding = Literal["reflect", "zeros"]


class RoutingRecord(Protocol):
    """What every architecture's routing of a batch offers (MoCE-IR's `Routing`, LoRA-IR's `LoRARouting`)."""

    @property
    def experts(self) -> Tensor:
        """The chosen experts, best first: (B, layers, k) for per-layer routing, (B, k) for one choice per image."""
        ...

    @property
    def logits(self) -> Tensor | None:
        """The clean router logits; None when the routing was imposed rather than decided."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> RoutingRecord: ...

    def to(self, device: torch.device | str) -> RoutingRecord: ...

    def summary(self) -> tuple[list[list[int]], list[list[float]]]:
        """The first image's chosen experts and their gates, as (layers, k) lists (one layer for a global gate)."""
        ...

    def consensus(self) -> RoutingRecord:
        """One routing (batch 1) standing for the whole batch (e.g. the sample frames of a video shot)."""
        ...


@dataclass(frozen=True)
class RoutingReport:
    """What the routing of one pass looks like."""

    #: True: a choice per routed layer (experts (B, layers, k)); False: one choice per image (experts (B, k))
    per_layer: bool
    #: True: `route(x)` is a pass of its own ahead of restoration (a classifier reading the image as given);
    #: False: the routing is decided inside the restoration pass (`route(x)` is a whole forward pass)
    separate: bool
    #: names of the routed layers in forward order ([] without per-layer routing)
    layer_names: Callable[[Any], list[str]]
    #: experts each routed layer chooses from
    num_experts: Callable[[Any], int]


@dataclass(frozen=True)
class Classifier:
    """A built-in degradation classifier (LoRA-IR's CLIP router): the model names the degradation of each image."""

    #: the class names, in the order of the routing's logits
    names: Callable[[Any], tuple[str, ...]]
    #: per image of a routing: (class name, the classifier's probability for it)
    classify: Callable[[Any, Any], list[tuple[str, float]]]


@dataclass(frozen=True)
class Tiling:
    """How the network may run in tiles."""

    supported: bool = True
    #: the routing (or another global statistic) must be decided once for the whole image and imposed on its tiles
    shared_routing: bool = False


def _one(model: Any) -> int:
    return 1


@dataclass(frozen=True)
class Capabilities:
    """What a model of this architecture can do, as data (read by the engine, evaluation, bench and reports)."""

    #: H and W of `run`'s input must be multiples of this (a function of the model: it depends on its config)
    size_multiple: Callable[[Any], int] = _one
    #: the one rule by which everything (model(x), the engine, tiles, evaluation, bench, training) pads to the size
    #: multiple: the official code's where it pads, else reflect
    padding: Padding = "reflect"
    routing: RoutingReport | None = None
    #: `run(x, dense=True)`: every expert on every image, gated (same result, for checks and benchmarks)
    dense: bool = False
    #: `run(x, routing=...)` takes a given routing (a whole image's, on its tiles)
    imposed_routing: bool = False
    #: a routing that sends `batch` images to `expert` everywhere: (model, batch, expert) -> routing; ValueError for
    #: an expert the model does not have
    uniform_routing: Callable[[Any, int, int], RoutingRecord] | None = None
    #: `run(x, routing_noise=...)`: the official router-logit noise at inference
    routing_noise: bool = False
    classifier: Classifier | None = None
    #: `--precision` values the network runs in
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    tiling: Tiling = field(default_factory=Tiling)
    #: `run(x, reference=True)`: the plain formulation the fast paths are tested and benchmarked against
    reference_path: bool = False
    #: the modules behind each part of a time breakdown (`irtool bench --breakdown`); the rest is the trunk
    profile_parts: Callable[[Any], Mapping[str, list[nn.Module]]] | None = None


@dataclass(frozen=True)
class Join:
    """How a two-file model becomes one: the main file's network and the `companion` spec's network."""

    #: the ARCHS key of the second file's architecture
    companion: str
    #: what the second file is called in messages and in `load_model`'s keyword (router=...)
    role: str
    #: (main network, companion network, class names from the manifest or None) -> the joined model; ValueError when
    #: they do not fit together
    join: Callable[[Any, Any, tuple[str, ...] | None], nn.Module]
    #: why a main file alone does not load, and how to give the second file (after "<path>: ")
    missing: str
    #: why the companion file alone does not load (after "<path>: ")
    alone: str
    #: after the joined model is on its device: what the companion needs there (LoRA-IR: its router in bf16 on CUDA)
    place: Callable[[Any, torch.device], None] | None = None


class _Described(Protocol):
    config: Any


class Restoring(Protocol):
    """The calls every architecture's model answers (see the module docstring); `restoring(model)` gives this view."""

    def run(self, x: Tensor, routing: Any = None, **options: Any) -> Any: ...

    def route(self, x: Tensor) -> Any: ...


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to recognise its checkpoints, read their config, build the network, and what it can do."""

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
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: a two-file model: how the main file's network joins its companion (None for one-file models)
    join: Join | None = None
    #: False for a network that exists only as the second file of another architecture (LoRA-IR's CLIP router)
    standalone: bool = True

    def config_of(self, model: nn.Module) -> Any:
        """The config object of one of this architecture's models (every model class keeps it as `config`)."""
        return cast(_Described, model).config

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """What reports say about a model: architecture, config (as a dict) and parameter count."""
        return {
            "arch": self.name,
            "config": self.config_of(model).to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
        }


def restoring(model: nn.Module) -> Restoring:
    """`model` typed by its contract (`run`, `route`), once `spec_of` has accepted it."""
    spec_of(model)
    return cast(Restoring, model)


def spec_of(model: nn.Module) -> ArchSpec:
    """The spec of an irtool model (its class's `spec`); TypeError for a network that is not one."""
    try:
        spec = cast(Any, model).spec
    except AttributeError:
        spec = None
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"{type(model).__name__} is not an irtool model: its class has no `spec` (an ArchSpec)")
    return spec


# --------------------------------------------------------------------------------------------------------------------
# Padding to the size multiple: the one place it is done (models' `forward`, the engine, evaluation, training)


def require_multiple(x: Tensor, multiple: int, name: str) -> None:
    """ValueError (one line) unless x's H and W are multiples of `multiple`: what every `run` checks first."""
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name}: input {w}x{h} px is not a multiple of {multiple} px; call the model itself (model(x) pads and "
            "crops back) or irtool.archs.spec.run_padded"
        )


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple`: mode "reflect" mirrors (edge-replicates
    when the image is too small to reflect), "zeros" pads with zeros."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"padding mode {mode!r}: 'reflect' or 'zeros'")
    if not (pad_h or pad_w):
        return x
    if mode == "zeros":
        return F.pad(x, (0, pad_w, 0, pad_h))
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if pad_h < h and pad_w < w else "replicate")


def run_padded(model: nn.Module, x: Tensor, *, padding: str | None = None, **kwargs: Any) -> Any:
    """`model.run(x, **kwargs)` for any H and W: x padded to the model's size multiple by its spec's `padding`
    (unless given), the result's output cropped back to H x W. A model whose router is a pass of its own (LoRA-IR)
    routes the image as given and restores the padded one with that routing, as the official code does."""
    caps = spec_of(model).capabilities
    net = restoring(model)
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, caps.size_multiple(model), padding or caps.padding)
    if padded is not x and kwargs.get("routing") is None and caps.routing is not None and caps.routing.separate:
        kwargs["routing"] = net.route(x)
    result = net.run(padded, **kwargs)
    if padded is x:
        return result
    return dataclasses.replace(result, output=result.output[..., :h, :w].contiguous())
