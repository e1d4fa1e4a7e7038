"""What network a config trains, which of its parameters learn, and how one training forward pass runs.

- MoCE-IR: the whole network; the forward returns the restored patch, the routing balance loss and the chosen
  experts (the loop needs them for DDP, see `loop`).
- LoRA-IR, three stages (the released code's; the paper's two stages with the router trained first):
  - `router`: the DG-Router (CLIP image tower frozen, as the official `CLIPDeRouter`); its MLP and class head learn
    to name each patch's task with cross-entropy. `--init` gives the CLIP tower (e.g. the released router file).
  - `base`: the restoration network without experts (the official `PriorPreModelL`, all convs with r = 0): here the
    LoRA network with every LoRA update held at zero (B = 0, frozen), which computes exactly the plain convs and
    keeps the official key layout. The frozen router gives each patch its degradation prior.
  - `experts`: the LoRA experts on top of the base weights (`--init`), expert i serving class i of the frozen
    router. Only the LoRA parameters learn, as the paper describes; `--train-all` trains every parameter, as the
    released `IR3InputModel` does (it marks the LoRA parameters trainable, then every parameter).
  Network stages load LoRA-free checkpoints (the official stage-1 weights) with the LoRA parameters fresh.

Imports torch and `irtool.archs`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .presets import ConfigError, TrainConfig

if TYPE_CHECKING:
    from ..archs.clip_router import CLIPRouter
    from ..archs.moce_ir import MoCEIR


def _overrides(config: TrainConfig, cls: type) -> dict[str, Any]:
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items()}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"training config: unknown {cls.__name__} field(s) {', '.join(unknown)}")
    return overrides


def network_config(config: TrainConfig) -> Any:
    """The architecture config a run trains: the named variant, explicit field overrides, and what the recipe fixes
    (MoCE-IR's complexity bias; LoRA-IR's classes/experts = the tasks)."""
    try:
        if config.arch == "moce_ir":
            from ..archs import moce_ir

            return dataclasses.replace(
                moce_ir.VARIANTS[config.variant],
                **_overrides(config, moce_ir.MoCEIRConfig),
                with_complexity=config.with_complexity,
            )
        if config.stage == "router":
            from ..archs import clip_router

            return dataclasses.replace(
                clip_router.VARIANTS[config.variant],
                **_overrides(config, clip_router.CLIPRouterConfig),
                classes=tuple(config.tasks),
            )
        from ..archs import lora_ir

        return dataclasses.replace(
            lora_ir.VARIANTS[config.variant],
            **_overrides(config, lora_ir.LoRAIRNetConfig),
            num_experts=len(config.tasks),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def _is_lora(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("lora_A_list", "lora_B_list")


def _load_init(net: nn.Module, config: TrainConfig, init: str) -> None:
    from ..loading import read_state_dict

    sd, _ = read_state_dict(init)
    own = net.state_dict()
    if config.stage == "router":
        # only the CLIP tower; the MLP and head are what this stage trains (for its own classes)
        sd = {k: v for k, v in sd.items() if k.startswith("clip_model.") and k in own}
        if not sd:
            raise CheckpointError(f"{config.init}: holds no CLIP tower (clip_model.*) for the router stage")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if config.stage == "router":
        missing = [k for k in missing if k.startswith("clip_model.")]
    elif config.arch == "lora_ir":
        missing = [k for k in missing if not _is_lora(k)]  # a LoRA-free (stage-1) checkpoint leaves the experts fresh
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{config.init}: does not fit the network being trained ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(shapes)} wrongly shaped tensors, e.g. {(missing + unexpected + shapes)[0]!r})"
        )
    net.load_state_dict(sd, strict=False)


def build_network(config: TrainConfig) -> nn.Module:
    """The network a run trains, seeded by `config.seed` (or `config.init`'s weights), with its trainable set."""
    from ..archs import ARCHS

    arch = "clip_router" if config.stage == "router" else config.arch
    net_cfg = network_config(config)
    torch.manual_seed(config.seed)
    net = ARCHS[arch].build(net_cfg)
    if config.stage == "experts" and not config.init and not config.train_all:
        raise ConfigError(
            "LoRA-IR's experts stage trains LoRA updates of the base network: pass --init BASE_WEIGHTS "
            "(or --train-all to train everything from scratch)"
        )
    if config.init:
        _load_init(net, config, config.init)
    if config.stage == "router":
        net.requires_grad_(True)
        net.clip_model.requires_grad_(False)
    elif config.stage == "base":
        for name, p in net.named_parameters():
            if name.endswith("lora_B_list"):
                with torch.no_grad():
                    p.zero_()
            p.requires_grad_(not _is_lora(name))
    elif config.stage == "experts":
        for name, p in net.named_parameters():
            p.requires_grad_(config.train_all or _is_lora(name))
    return net


def load_router(config: TrainConfig) -> CLIPRouter | None:
    """LoRA-IR's frozen router for the network stages (None otherwise), checked against the tasks."""
    if config.stage not in ("base", "experts"):
        return None
    if not config.router:
        raise ConfigError(f"LoRA-IR's {config.stage} stage needs --router, the trained router checkpoint")
    from ..archs.clip_router import CLIPRouter
    from ..loading import build_model, read_state_dict

    sd, metadata = read_state_dict(config.router)
    router = build_model(sd, metadata, config.router)
    if not isinstance(router, CLIPRouter):
        raise CheckpointError(f"{config.router}: given as the router but it is not a LoRA-IR CLIP router")
    classes, tasks = tuple(router.config.classes), tuple(config.tasks)
    named = not all(c.startswith("class") for c in classes)
    if len(classes) != len(tasks) or (named and classes != tasks):
        raise ConfigError(
            f"{config.router}: the router's classes ({', '.join(classes)}) are not the tasks "
            f"({', '.join(tasks)}); class i must be task i"
        )
    router.requires_grad_(False)
    return router.eval()


# --------------------------------------------------------------------------------------------------------------------
# One training forward: batch -> (prediction, auxiliary loss, chosen experts, DDP zero term, routing CE)


class RouteReadout(nn.Module):
    """Training-only routing supervision: per MoCE layer, a linear map from the router's clean gate logits (E) to
    the tasks (T). Cross-entropy of its output against the task label, averaged over layers, pulls each layer's
    routing apart by task, so that a calibration can name degradations from the routing. Not part of the weights."""

    def __init__(self, layers: int, experts: int, tasks: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(experts, tasks) for _ in range(layers))

    def forward(self, logits: Tensor, task: Tensor) -> Tensor:
        """(B,) mean over layers of the cross-entropy of each layer's read-out; logits (B, L, E)."""
        per_layer = [
            nn.functional.cross_entropy(m(logits[:, i].float()), task, reduction="none")
            for i, m in enumerate(self.maps)
        ]
        return torch.stack(per_layer, dim=1).mean(dim=1)


class MoCEForward(nn.Module):
    """MoCE-IR: (output, balance loss, experts (B, layers, k), zero term, routing cross-entropy (B,) or None).

    `zero_term` is 0 · sum of every expert parameter: it puts every expert into the backward graph so that DDP needs
    no `find_unused_parameters` (see `loop`); built only when several processes train together. `readout`: the
    routing supervision (`RouteReadout`), when the recipe asks for it.
    """

    def __init__(self, net: MoCEIR, zero_term: bool, readout: RouteReadout | None = None) -> None:
        super().__init__()
        self.net = net
        self.zero_term = zero_term
        self.readout = readout
        self.groups = [
            list(layer.expert(e).parameters()) for layer in net.moce_layers for e in range(len(layer.experts))
        ]
        self.num_experts = len(net.moce_layers[0].experts)

    def forward(self, batch: dict[str, Tensor], noise: torch.Generator | None):
        result = self.net.run(batch["lq"], routing_noise=noise if noise is not None else True)
        zero = None
        if self.zero_term:
            zero = torch.stack([p.sum() for group in self.groups for p in group]).sum() * 0.0
        route = None
        if self.readout is not None:
            route = self.readout(result.routing.logits, batch["task"])
        return result.output, result.aux_loss, result.routing.experts, zero, route


def _views(router: CLIPRouter, batch: dict[str, Tensor]) -> Tensor:
    from ..archs.clip_router import normalize_views

    return normalize_views(batch["views"], router.config.image_mean, router.config.image_std)


class LoRAIRForward(nn.Module):
    """LoRA-IR's restoration network with its frozen router: (output, None, None, None). The router reads the CLIP
    views the data loader made from each degraded patch (as the official `AllInOneCLIPDataset`)."""

    def __init__(self, net: nn.Module, router: CLIPRouter) -> None:
        super().__init__()
        self.net = net
        self.router = router

    def forward(self, batch: dict[str, Tensor], noise: Any = None):
        with torch.no_grad():
            logits, prior = self.router(_views(self.router, batch))
        return self.net(batch["lq"], prior, logits), None, None, None, None


class RouterForward(nn.Module):
    """LoRA-IR's router: (class logits, None, None, None)."""

    def __init__(self, router: CLIPRouter) -> None:
        super().__init__()
        self.router = router

    def forward(self, batch: dict[str, Tensor], noise: Any = None):
        logits, _ = self.router(_views(self.router, batch))
        return logits, None, None, None, None


def forward_module(
    net: nn.Module, router: CLIPRouter | None, config: TrainConfig, distributed: bool
) -> MoCEForward | RouterForward | LoRAIRForward:
    """The training forward of `net` (see the classes above); `router`: LoRA-IR's frozen router (network stages)."""
    from ..archs.clip_router import CLIPRouter
    from ..archs.moce_ir import MoCEIR

    if isinstance(net, MoCEIR):
        readout = None
        if config.route_task_weight:
            # seeded apart from the network, so that switching the supervision on leaves the network's init alone
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed * 7919 + 17)
                readout = RouteReadout(len(net.moce_layers), len(net.moce_layers[0].experts), len(config.tasks))
        return MoCEForward(net, zero_term=distributed, readout=readout)
    if isinstance(net, CLIPRouter):
        return RouterForward(net)
    if router is None:
        raise ConfigError(f"LoRA-IR's {config.stage} stage needs --router, the trained router checkpoint")
    return LoRAIRForward(net, router)


def router_views_spec(config: TrainConfig, net: nn.Module, router: CLIPRouter | None) -> tuple[int, int] | None:
    """(size, tiles) of the CLIP views the loader must add to each sample, or None."""
    from ..archs.clip_router import CLIPRouter

    clip = net if isinstance(net, CLIPRouter) else router
    if config.arch != "lora_ir" or clip is None:
        return None
    return clip.config.image_size, clip.config.tiles


def restorer(net: nn.Module, router: CLIPRouter | None) -> nn.Module:
    """The model validation restores with: the network itself, or LoRA-IR's network joined with its router."""
    from ..archs.lora_ir import LoRAIR, LoRAIRNet

    if router is None or not isinstance(net, LoRAIRNet):
        return net
    return LoRAIR(net, router)
