"""LoRA-IR: "Taming Low-Rank Experts for Efficient All-in-One Image Restoration" (Ai, Huang, He; arXiv 2410.15385).

Two networks work together:
- the restoration network `LoRAIRNet` (official `PriorFtModelL`): NAFNet (width 64, encoders [1,1,1,28], middle 1,
  decoders [1,1,1,1] for Setting I) with a degradation-aware gate (DAM) before every encoder level and the middle
  block, driven by the router's degradation prior, and a mixture of low-rank (LoRA) experts in *every* convolution;
- the DG-Router (`clip_router.CLIPRouter`), a CLIP classifier whose class logits are the expert gate: class i picks
  expert i. `LoRAIR` holds both and is what `irtool.load_model` returns.

Module attribute names equal the official state-dict keys (`intro`, `ending`, `intro_de`, `encoders`, `downs`,
`middle_blks`, `ups`, `decoders`; inside convs `conv`, `lora_A_list`, `lora_B_list`), so `setting1_ir.pth` loads with
`strict=True` and no renaming table.

How experts run. The official code (basicsr `loralib.ConvMixLoRA`) merges, at batch size 1, the gated expert
updates into a copy of every conv weight on every call: W = W0 + sum_e g_e * scale * (B_e @ A_e).view(W0.shape); for
larger batches it runs the base conv plus every expert conv, gated. With top-1 routing g is one-hot, so an image
needs exactly one merged weight set per class. `LoRAIRNet` merges each expert once, caches the merged weights per
expert (dropped when the weights change or move), groups a batch by expert, and then costs exactly a plain NAFNet
pass. `dense=True` runs the official batched path (base conv + every expert, gated) for checks and benchmarks.

Deliberate departures from the official code (github.com/shallowdream204/LoRA-IR, `basicsr/models/archs/
PriorFtModel_arch.py`, `local_arch.py`, `loralib/layers.py`):
- SCA pooling is global average pooling by default. The official TLC `AvgPool2d` fixes its kernels lazily on the
  first image it sees (floor(1.5 x that feature map), `Local_Base3.convert` skips NAFNet's warm-up), so global
  pooling for that image and a box filter for later images more than 1.5x larger: results depend on which file came
  first. `local_pool_px` turns on NAFNet's local pooling with a kernel computed per call from the given base size
  (384 px for Setting I's 256-px training crops), never carried over from another image.
- Batches: each image runs only its own expert (grouped by class). The official batched path computes every expert;
  it gives the same result (to rounding), and so does `dense=True`.

This module imports torch only: no I/O, no device choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._keys import config_fields, count_children
from .clip_router import VARIANTS as ROUTER_VARIANTS
from .clip_router import CLIPRouter, CLIPRouterConfig
from .spec import ArchSpec, Capabilities, Classifier, Join, RoutingReport, Tiling, require_multiple, run_padded

ARCH = "lora_ir"


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LoRAIRNetConfig:
    """Hyperparameters of the restoration network. The defaults are the released Setting I network
    (official `Setting1_Ft.yml`, `network_g`)."""

    width: int = 64
    #: NAFBlocks per encoder level, full resolution first; each level halves the resolution
    enc_blocks: tuple[int, ...] = (1, 1, 1, 28)
    middle_blocks: int = 1
    #: NAFBlocks per decoder level, lowest resolution first (as the official `dec_blk_nums`)
    dec_blocks: tuple[int, ...] = (1, 1, 1, 1)
    #: LoRA rank r of every expert in every conv
    rank: int = 8
    num_experts: int = 3
    top_k: int = 1
    #: lora_alpha / r; the official code fixes lora_alpha = 2r
    lora_scaling: float = 2.0
    #: width of the router's degradation prior (fixed at 384 in the official class)
    prior_dim: int = 384
    #: hidden width of the DAM gate's first 1x1 conv (fixed at 128 in the official class)
    dam_hidden: int = 128
    in_channels: int = 3
    #: training crop size; sets the recommended local-pooling base size (1.5x, NAFNet's TLC)
    train_size: int = 256

    def __post_init__(self) -> None:
        if not self.enc_blocks or len(self.enc_blocks) != len(self.dec_blocks):
            raise ValueError(
                f"LoRA-IR config: enc_blocks ({len(self.enc_blocks)}) and dec_blocks ({len(self.dec_blocks)}) must "
                "describe the same, non-zero number of levels"
            )
        if self.width < 16:
            raise ValueError(
                f"LoRA-IR config: width must be at least 16 (the DAM gate squeezes to width/16), got {self.width}"
            )
        if self.rank < 1 or self.num_experts < 1:
            raise ValueError("LoRA-IR config: rank and num_experts must be at least 1")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"LoRA-IR config: top_k must be in 1..{self.num_experts}, got {self.top_k}")

    @property
    def levels(self) -> int:
        return len(self.enc_blocks)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one stride-2 conv per level); the official code zero-pads to it."""
        return 2**self.levels

    @property
    def tlc_px(self) -> int:
        """NAFNet's TLC base size for local pooling: 1.5x the training crop (384 px for Setting I)."""
        return int(self.train_size * 1.5)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAIRNetConfig:
        return cls(**config_fields(cls, d))

    @classmethod
    def from_official_kwargs(cls, kw: Mapping[str, Any]) -> LoRAIRNetConfig:
        """From the official `PriorFtModelL(**kwargs)` arguments (YAML `network_g`, reference `configs.json`)."""
        train = kw.get("train_size", (1, 3, 256, 256))
        return cls(
            width=kw.get("width", 16),
            enc_blocks=tuple(kw.get("enc_blk_nums", ())),
            middle_blocks=kw.get("middle_blk_num", 1),
            dec_blocks=tuple(kw.get("dec_blk_nums", ())),
            rank=kw.get("r", 4),
            num_experts=kw.get("num_experts", 3),
            top_k=kw.get("top_k", 1),
            in_channels=kw.get("img_channel", 3),
            train_size=int(train[-1]),
        )


VARIANTS: dict[str, LoRAIRNetConfig] = {
    "setting1": LoRAIRNetConfig(),
    # the golden-test network (reference configs.json "tiny"); small enough for unit tests
    "tiny": LoRAIRNetConfig(width=16, enc_blocks=(1, 1, 1, 2), rank=2),
}


@dataclass(frozen=True)
class LoRAIRConfig:
    """Both halves of a LoRA-IR model: the restoration network and its router."""

    ir: LoRAIRNetConfig = LoRAIRNetConfig()
    router: CLIPRouterConfig = CLIPRouterConfig()

    def __post_init__(self) -> None:
        if self.router.num_classes != self.ir.num_experts:
            raise ValueError(
                f"LoRA-IR config: the router has {self.router.num_classes} classes but the network "
                f"{self.ir.num_experts} experts (class i picks expert i)"
            )
        if self.router.prior_dim != self.ir.prior_dim:
            raise ValueError(
                f"LoRA-IR config: the router's prior has {self.router.prior_dim} channels, the network expects "
                f"{self.ir.prior_dim}"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        return self.router.classes

    @property
    def size_multiple(self) -> int:
        return self.ir.size_multiple

    def to_dict(self) -> dict[str, Any]:
        return {"ir": self.ir.to_dict(), "router": self.router.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAIRConfig:
        return cls(LoRAIRNetConfig.from_dict(d["ir"]), CLIPRouterConfig.from_dict(d["router"]))


# --------------------------------------------------------------------------------------------------------------------
# Routing record


@dataclass
class LoRARouting:
    """What the DG-Router decided for a batch.

    logits: (B, E) float, the router's class logits; they are also the expert gate (class i = expert i).
    prior:  (B, P) float, the degradation prior that drives the DAM gates (official `de_prior`).
    top_k:  how many experts the gate keeps (1 in every released model).
    """

    logits: Tensor
    prior: Tensor
    top_k: int = 1

    def __post_init__(self) -> None:
        if self.logits.dim() != 2 or self.prior.dim() != 2 or self.logits.shape[0] != self.prior.shape[0]:
            raise ValueError(
                f"routing: logits (B, E) and prior (B, P) must share B, got {tuple(self.logits.shape)} and "
                f"{tuple(self.prior.shape)}"
            )

    def __len__(self) -> int:
        return self.logits.shape[0]

    @property
    def experts(self) -> Tensor:
        """(B, k) int64: the experts each image runs, best first (top-k of the logits, as the official gate)."""
        return torch.topk(self.logits, self.top_k, dim=-1).indices

    @property
    def gates(self) -> Tensor:
        """(B, E) float: softmax over the top-k logits, 0 elsewhere (one-hot for top-1), as the official gate."""
        keep = torch.zeros_like(self.logits, dtype=torch.bool).scatter_(-1, self.experts, True)
        return self.logits.float().masked_fill(~keep, float("-inf")).softmax(dim=-1)

    @property
    def probabilities(self) -> Tensor:
        """(B, E) float: the classifier's softmax over all classes (its confidence in each degradation)."""
        return self.logits.float().softmax(dim=-1)

    def summary(self) -> tuple[list[list[int]], list[list[float]]]:
        """The first image's experts and their gates, as one "layer": ([[e, ...]], [[g, ...]])."""
        experts = self.experts[:1]
        return experts.tolist(), self.gates[:1].gather(-1, experts.to(self.logits.device)).tolist()

    def consensus(self) -> LoRARouting:
        """One routing for the whole batch: the mean class logits and the mean prior."""
        return LoRARouting(
            self.logits.float().mean(0, keepdim=True).cpu(), self.prior.float().mean(0, keepdim=True).cpu(), self.top_k
        )

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> LoRARouting:
        """The routing of a subset of the batch (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return type(self)(self.logits[index], self.prior[index], self.top_k)

    def to(self, device: torch.device | str) -> LoRARouting:
        return type(self)(self.logits.to(device), self.prior.to(device), self.top_k)

    @staticmethod
    def cat(parts: list[LoRARouting]) -> LoRARouting:
        return LoRARouting(torch.cat([p.logits for p in parts]), torch.cat([p.prior for p in parts]), parts[0].top_k)


@dataclass
class LoRAIRResult:
    """Output of `LoRAIR.run`: the restored batch (raw, not clamped) and the routing that produced it."""

    output: Tensor
    routing: LoRARouting


@dataclass(frozen=True)
class _Pass:
    """How the convs of one forward pass use their experts, and how SCA pools.

    expert: merge this one expert into every conv (cached); the batch all uses it.
    gates:  (B, E) expert weights, for `dense` (base conv + every expert conv, gated: the official batched path) or,
            without `dense`, a one-off merge of the gated sum (batch of 1; top-k > 1).
    pool_px: local SCA pooling with this base size in input pixels; None for global pooling.
    """

    expert: int | None = None
    gates: Tensor | None = None
    dense: bool = False
    pool_px: int | None = None


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


def _stamp(t: Tensor) -> tuple:
    """What identifies a tensor's current values: storage, dtype, device and in-place version."""
    try:
        version = t._version
    except RuntimeError:  # inference tensors keep no version counter
        version = -1
    return (t.data_ptr(), t.dtype, t.device, version)


class LoRAConv2d(nn.Module):
    """A conv with a mixture of LoRA experts (the official `loralib.Conv2dMix`).

    Expert e changes the weight by `lora_scaling * (lora_B_list[e] @ lora_A_list[e]).view(W.shape)`: a raw reshape
    of a (C_out/g·k) x (C_in·k) product, loralib's ConvLoRA convention, not a factorised conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        rank: int,
        num_experts: int,
        scaling: float,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        k = kernel_size
        self.lora_A_list = nn.Parameter(torch.empty(num_experts, rank * k, in_channels * k))
        self.lora_B_list = nn.Parameter(torch.zeros(num_experts, out_channels // groups * k, rank * k))
        for e in range(num_experts):  # loralib's init: A like nn.Linear, B zero (so a fresh expert changes nothing)
            nn.init.kaiming_uniform_(self.lora_A_list[e], a=5**0.5)
        self.scaling = scaling
        self._merged: dict[int, tuple[tuple, Tensor]] = {}

    @property
    def num_experts(self) -> int:
        return self.lora_A_list.shape[0]

    def delta(self, expert: int) -> Tensor:
        """Expert `expert`'s weight update, scaled."""
        w = self.conv.weight
        return (self.lora_B_list[expert] @ self.lora_A_list[expert]).view(w.shape) * self.scaling

    def merged_weight(self, expert: int) -> Tensor:
        """W0 + delta(expert), computed once and cached until a weight changes (in place or by moving the module).

        Not cached while autograd records (training): the merge must then stay part of the graph."""
        stamp = (_stamp(self.conv.weight), _stamp(self.lora_A_list), _stamp(self.lora_B_list))
        hit = self._merged.get(expert)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        weight = self.conv.weight + self.delta(expert)
        if weight.requires_grad:
            return weight
        self._merged[expert] = (stamp, weight)
        return weight

    def clear_merged(self) -> None:
        self._merged.clear()

    def _apply(self, fn: Any, recurse: bool = True) -> LoRAConv2d:
        self._merged.clear()  # moved or cast: the cached merges belong to the old tensors
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor, state: _Pass) -> Tensor:
        conv = self.conv
        if state.expert is not None:
            return conv._conv_forward(x, self.merged_weight(state.expert), conv.bias)
        gates = state.gates
        if gates is None:
            return conv(x)
        gates = gates.to(x.dtype)
        if state.dense:
            # Official batched path: base conv, plus every expert's update as a bias-free conv, gated per image.
            out = conv(x)
            for e in range(self.num_experts):
                out = out + gates[:, e].view(-1, 1, 1, 1) * conv._conv_forward(x, self.delta(e), None)
            return out
        # Official batch-1 path: merge the gated experts into one weight (experts gated ~0 are skipped).
        if x.shape[0] != 1:
            raise ValueError("a gated merge serves one image at a time; group the batch first")
        weight = conv.weight
        for e in range(self.num_experts):
            if gates[0, e] > 1e-8:
                weight = weight + gates[0, e] * self.delta(e)
        return conv._conv_forward(x, weight, conv.bias)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W), eps 1e-6, computed as the official `LayerNorm2d`."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def box_mean(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Mean of every kernel-sized window lying inside x (kernels larger than x shrink to it), replicate-padded back to
    x's size with the windows centred: NAFNet's TLC `AvgPool2d` (non-`fast_imp`). Computed from running sums in
    float32, one axis at a time, so the cost does not grow with the kernel."""
    h, w = x.shape[-2:]
    kh, kw = min(kernel[0], h), min(kernel[1], w)
    s = F.pad(x.float().cumsum(dim=-1), (1, 0))
    s = s[..., kw:] - s[..., : w + 1 - kw]
    s = F.pad(s.cumsum(dim=-2), (0, 0, 1, 0))
    s = (s[..., kh:, :] - s[..., : h + 1 - kh, :]) / (kh * kw)
    bh, bw = s.shape[-2:]
    s = F.pad(s, ((w - bw) // 2, (w - bw + 1) // 2, (h - bh) // 2, (h - bh + 1) // 2), mode="replicate")
    return s.to(x.dtype)


class ChannelPool(nn.Module):
    """The pooling of NAFNet's simplified channel attention: the whole feature map's mean per channel, or (TLC) a
    local mean over windows of `pool_px / stride` feature pixels, `stride` being this level's downscale factor."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor, pool_px: int | None) -> Tensor:
        if pool_px:
            k = max(1, pool_px // self.stride)
            if k < x.shape[-2] or k < x.shape[-1]:
                return box_mean(x, (k, k))
        return F.adaptive_avg_pool2d(x, 1)


class NAFBlock(nn.Module):
    """NAFNet's block with every conv a LoRA-expert conv: LN, 1x1 up, depthwise 3x3, SimpleGate, channel attention,
    1x1 down, residual x beta; LN, 1x1 up, SimpleGate, 1x1 down, residual x gamma."""

    def __init__(self, c: int, stride: int, lora: dict[str, Any]) -> None:
        super().__init__()
        dw = 2 * c
        self.conv1 = LoRAConv2d(c, dw, 1, **lora)
        self.conv2 = LoRAConv2d(dw, dw, 3, padding=1, groups=dw, **lora)
        self.conv3 = LoRAConv2d(dw // 2, c, 1, **lora)
        # Official `sca` is Sequential(pool, conv); indexing keeps its keys (`sca.1.*`).
        self.sca = nn.ModuleList([ChannelPool(stride), LoRAConv2d(dw // 2, dw // 2, 1, **lora)])
        self.conv4 = LoRAConv2d(c, 2 * c, 1, **lora)
        self.conv5 = LoRAConv2d(c, c, 1, **lora)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: Tensor, state: _Pass) -> Tensor:
        x = self.conv2(self.conv1(self.norm1(inp), state), state)
        a, b = x.chunk(2, dim=1)
        x = a * b
        x = x * self.sca[1](self.sca[0](x, state.pool_px), state)
        y = inp + self.conv3(x, state) * self.beta
        a, b = self.conv4(self.norm2(y), state).chunk(2, dim=1)
        return y + self.conv5(a * b, state) * self.gamma


class DAMStage(nn.Module):
    """A stage whose input is first gated by the degradation prior (the paper's DAM, official `CustomSeqEnc`):
    x + beta * LN(x) * sigmoid(conv4(relu(conv3(conv2(gelu(conv1(e_d))))))), then NAFBlocks."""

    def __init__(self, c: int, blocks: int, stride: int, cfg: LoRAIRNetConfig, lora: dict[str, Any]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(NAFBlock(c, stride, lora) for _ in range(blocks))
        self.conv1 = LoRAConv2d(cfg.prior_dim, cfg.dam_hidden, 1, **lora)
        self.conv2 = LoRAConv2d(cfg.dam_hidden, c, 1, **lora)
        self.conv3 = LoRAConv2d(c, c // 16, 1, **lora)
        self.conv4 = LoRAConv2d(c // 16, c, 1, **lora)
        self.norm = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor, prior: Tensor, state: _Pass) -> Tensor:
        gate = self.conv2(F.gelu(self.conv1(prior, state)), state)
        gate = torch.sigmoid(self.conv4(F.relu(self.conv3(gate, state)), state))
        x = x + self.beta * (self.norm(x) * gate)
        for block in self.blocks:
            x = block(x, state)
        return x


class Stage(nn.Module):
    """A decoder stage: NAFBlocks only (the released code has no DAM in the decoders; the paper's figure does)."""

    def __init__(self, c: int, blocks: int, stride: int, lora: dict[str, Any]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(NAFBlock(c, stride, lora) for _ in range(blocks))

    def forward(self, x: Tensor, state: _Pass) -> Tensor:
        for block in self.blocks:
            x = block(x, state)
        return x


# --------------------------------------------------------------------------------------------------------------------
# The restoration network


class LoRAIRNet(nn.Module):
    """LoRA-IR's restoration network. `forward(x, prior, logits)` restores (B, C, H, W) in [0, 1] (raw output, not
    clamped) given the router's degradation prior (B, P) and class logits (B, E)."""

    arch = ARCH

    def __init__(self, config: LoRAIRNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or LoRAIRNetConfig()
        self.config = cfg
        lora: dict[str, Any] = dict(rank=cfg.rank, num_experts=cfg.num_experts, scaling=cfg.lora_scaling)
        p = cfg.prior_dim
        # Registration order follows the official class, so state dicts list keys in the official order.
        self.intro = LoRAConv2d(cfg.in_channels, cfg.width, 3, padding=1, **lora)
        self.ending = LoRAConv2d(cfg.width, cfg.in_channels, 3, padding=1, **lora)
        # Official Sequential(conv, GELU, conv, GELU); indexing keeps its keys (`intro_de.0.*`, `intro_de.2.*`).
        self.intro_de = nn.ModuleList([LoRAConv2d(p, p, 1, **lora), nn.GELU(), LoRAConv2d(p, p, 1, **lora), nn.GELU()])
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        c = cfg.width * 2**cfg.levels
        self.middle_blks = DAMStage(c, cfg.middle_blocks, 2**cfg.levels, cfg, lora)
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        for level, blocks in enumerate(cfg.enc_blocks):
            self.encoders.append(DAMStage(cfg.width * 2**level, blocks, 2**level, cfg, lora))
            self.downs.append(LoRAConv2d(cfg.width * 2**level, cfg.width * 2 ** (level + 1), 2, stride=2, **lora))
        for i, blocks in enumerate(cfg.dec_blocks):
            self.ups.append(nn.ModuleList([LoRAConv2d(c, 2 * c, 1, bias=False, **lora), nn.PixelShuffle(2)]))
            c //= 2
            self.decoders.append(Stage(c, blocks, 2 ** (cfg.levels - 1 - i), lora))

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def lora_convs(self) -> list[LoRAConv2d]:
        return [m for m in self.modules() if isinstance(m, LoRAConv2d)]

    def clear_merged(self) -> None:
        """Free the cached merged weights (they are rebuilt on demand)."""
        for conv in self.lora_convs():
            conv.clear_merged()

    def forward(
        self,
        x: Tensor,
        prior: Tensor,
        logits: Tensor,
        *,
        dense: bool = False,
        local_pool_px: int | None = None,
    ) -> Tensor:
        """Restore x (B, C, H, W), H and W multiples of `size_multiple`, with the router's prior (B, P) and logits
        (B, E). The official code zero-pads to the multiple inside (`check_image_size`); here `LoRAIR`'s forward
        pads (zeros, then a crop of the output: the official numbers) and this network takes aligned sizes only.

        dense: run every expert on every image, gated (the official batched path): same result, for checks and
            benchmarks. Otherwise each image runs its top-1 expert merged into the weights, grouped by expert.
        local_pool_px: local channel-attention pooling with this base size in input pixels (NAFNet's TLC; see
            `config.tlc_px`); None or 0 pools globally.
        """
        b = x.shape[0]
        require_multiple(x, self.config.size_multiple, "LoRA-IR")
        if prior.shape[0] != b or logits.shape[0] != b:
            raise ValueError(f"prior/logits are for {prior.shape[0]}/{logits.shape[0]} images, the batch has {b}")
        routing = LoRARouting(logits, prior, self.config.top_k)
        pool = local_pool_px or None
        if dense:
            return self._forward(x, prior, _Pass(gates=routing.gates, dense=True, pool_px=pool))
        if self.config.top_k > 1:
            # Gated merges differ per image: one image at a time (no cache; no released model routes top-k > 1).
            gates = routing.gates
            return torch.cat(
                [
                    self._forward(x[i : i + 1], prior[i : i + 1], _Pass(gates=gates[i : i + 1], pool_px=pool))
                    for i in range(b)
                ]
            )
        experts = routing.experts[:, 0]
        chosen = experts.unique().tolist()
        if len(chosen) == 1:
            return self._forward(x, prior, _Pass(expert=chosen[0], pool_px=pool))
        out: Tensor | None = None
        for e in chosen:
            rows = (experts == e).nonzero().flatten()
            y = self._forward(x[rows], prior[rows], _Pass(expert=e, pool_px=pool))
            if out is None:
                out = y.new_empty((b, *y.shape[1:]))
            out[rows] = y
        assert out is not None
        return out

    def _forward(self, inp: Tensor, prior: Tensor, state: _Pass) -> Tensor:
        x = self.intro(inp, state)
        e = prior.to(inp.dtype)[:, :, None, None]
        e = self.intro_de[3](self.intro_de[2](self.intro_de[1](self.intro_de[0](e, state)), state))
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x, e, state)
            skips.append(x)
            x = down(x, state)
        x = self.middle_blks(x, e, state)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            conv, shuffle = cast(nn.ModuleList, up)  # (LoRAConv2d, PixelShuffle): the official `ups.{i}.{0,1}` keys
            x = decoder(shuffle(conv(x, state)) + skip, state)
        return self.ending(x, state) + inp


# --------------------------------------------------------------------------------------------------------------------
# Network and router together


class LoRAIR(nn.Module):
    """A LoRA-IR model: the restoration network `ir` and its DG-Router `router`.

    `model(x)` restores any H x W (routes the image as given, restores it zero-padded, crops back); `run(x)` (sides
    multiples of `size_multiple`) routes each image with CLIP (five views), then restores it with its class's expert
    and returns the routing too; `route(x)` is the routing alone; `classify(routing)` names the degradation per image.
    """

    arch = ARCH

    def __init__(self, ir: LoRAIRNet, router: CLIPRouter) -> None:
        super().__init__()
        self.config = LoRAIRConfig(ir.config, router.config)  # checks that the two halves fit together
        self.ir = ir
        self.router = router
        #: default for `run(local_pool_px=None)`: None pools SCA globally, a size in px pools locally (TLC)
        self.local_pool_px: int | None = None

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def profile_parts(self) -> dict[str, list[nn.Module]]:
        """The modules behind each part of a time breakdown (`irtool bench --breakdown`); the rest is the trunk. The
        experts have no modules of their own: a routed pass merges its expert into the conv weights."""
        return {"router": [self.router]}

    def route(self, x: Tensor) -> LoRARouting:
        """The router's decision for RGB images x (B, 3, H, W) in [0, 1]: class logits and degradation prior."""
        logits, prior = self.router.route(x)
        return LoRARouting(logits, prior, self.ir.config.top_k)

    def classify(self, routing: LoRARouting) -> list[tuple[str, float]]:
        """Per image: (class name, the classifier's probability for it) of the class whose expert runs."""
        probs = routing.probabilities
        best = routing.experts[:, 0]
        return [(self.classes[int(e)], float(probs[i, e])) for i, e in enumerate(best)]

    def run(
        self,
        x: Tensor,
        routing: LoRARouting | None = None,
        *,
        dense: bool = False,
        local_pool_px: int | None = None,
    ) -> LoRAIRResult:
        """Restore x (B, 3, H, W), RGB in [0, 1], H and W multiples of `size_multiple` (the aligned path; `model(x)`
        takes any size).

        routing: impose this routing (e.g. a whole image's, on its tiles) instead of running the router on x; a
            routing of one image applies to every image of the batch. (The official test routes the unpadded image:
            route it, then run the padded one with that routing, as `forward` and `run_padded` do.)
        dense: every expert on every image, gated (same result; for checks and benchmarks).
        local_pool_px: local channel-attention pooling base size in px (see `LoRAIRNetConfig.tlc_px`); None uses
            `self.local_pool_px`, 0 forces global pooling.
        """
        require_multiple(x, self.config.size_multiple, "LoRA-IR")
        if routing is None:
            routing = self.route(x)
        elif len(routing) == 1 and x.shape[0] > 1:
            routing = routing[[0] * x.shape[0]]
        elif len(routing) != x.shape[0]:
            raise ValueError(f"routing is for {len(routing)} images but the batch has {x.shape[0]}")
        pool = self.local_pool_px if local_pool_px is None else local_pool_px
        routing = routing.to(x.device)
        out = self.ir(x, routing.prior, routing.logits, dense=dense, local_pool_px=pool)
        return LoRAIRResult(out, routing)

    def forward(self, x: Tensor, routing: LoRARouting | None = None, *, dense: bool = False) -> Tensor:
        """The restored batch for any H x W: routed as given, zero-padded to `size_multiple`, run, cropped back."""
        return run_padded(self, x, routing=routing, dense=dense).output


# --------------------------------------------------------------------------------------------------------------------
# Detection: which state dicts are LoRA-IR restoration networks, and their config, from keys and shapes alone

_SIGNATURE = (
    "intro.conv.weight",
    "intro.lora_A_list",
    "intro_de.0.conv.weight",
    "encoders.0.conv1.conv.weight",
    "middle_blks.beta",
    "ending.conv.weight",
)


def detect(sd: Mapping[str, Tensor]) -> bool:
    """True when the (canonical) state dict has the LoRA-IR restoration network's signature keys."""
    return all(k in sd for k in _SIGNATURE)


#: what the tensors cannot show: experts per image and the LoRA scale (both multiply weights the file holds)
UNSEEN_FIELDS = ("top_k", "lora_scaling")


def infer_config(sd: Mapping[str, Tensor]) -> LoRAIRNetConfig:
    """Read the config off the tensors. `top_k` and the training size do not show; they get the released values."""
    width, in_channels = sd["intro.conv.weight"].shape[:2]
    levels = count_children(sd, "encoders")
    num_experts, rank, prior_dim = sd["intro_de.0.lora_A_list"].shape
    return LoRAIRNetConfig(
        width=int(width),
        enc_blocks=tuple(count_children(sd, f"encoders.{i}.blocks") for i in range(levels)),
        middle_blocks=count_children(sd, "middle_blks.blocks"),
        dec_blocks=tuple(count_children(sd, f"decoders.{i}.blocks") for i in range(count_children(sd, "decoders"))),
        rank=int(rank),
        num_experts=int(num_experts),
        prior_dim=int(prior_dim),
        dam_hidden=int(sd["encoders.0.conv1.conv.weight"].shape[0]),
        in_channels=int(in_channels),
    )


def build_pair(ir_config: LoRAIRNetConfig | str, router_config: CLIPRouterConfig | str | None = None) -> LoRAIR:
    """A fresh LoRA-IR model (random weights) from configs or variant names (the router's defaults to the same name)."""
    if isinstance(ir_config, str):
        router_config = router_config if router_config is not None else ir_config
        ir_config = VARIANTS[ir_config]
    if isinstance(router_config, str):
        router_config = ROUTER_VARIANTS[router_config]
    return LoRAIR(LoRAIRNet(ir_config), CLIPRouter(router_config or CLIPRouterConfig()))


# --------------------------------------------------------------------------------------------------------------------
# The two files as one model, and what the rest of irtool reads about LoRA-IR


def join(ir: LoRAIRNet, router: CLIPRouter, classes: tuple[str, ...] | None = None) -> LoRAIR:
    """The restoration network and its router as one model; `classes` (from the manifest) name the router's classes.
    ValueError when they do not fit together."""
    if classes is not None:
        if len(classes) != router.config.num_classes:
            raise ValueError(
                f"the manifest names {len(classes)} classes but the router has {router.config.num_classes}"
            )
        router.config = replace(router.config, classes=tuple(classes))
    return LoRAIR(ir, router)


def _place_router(model: LoRAIR, device: torch.device) -> None:
    """The router runs in bfloat16 on CUDA, as the official code does, and in float32 elsewhere."""
    model.router.to(dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)


SPEC = ArchSpec(
    name=ARCH,
    title="LoRA-IR",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=LoRAIRNetConfig.from_dict,
    build=LoRAIRNet,
    variants=VARIANTS,
    unseen_fields=UNSEEN_FIELDS,
    # what a loaded (joined) LoRA-IR model can do; `build` gives the restoration network alone
    capabilities=Capabilities(
        size_multiple=lambda model: model.config.size_multiple,
        padding="zeros",
        routing=RoutingReport(
            per_layer=False,
            separate=True,
            layer_names=lambda model: [],
            num_experts=lambda model: model.config.ir.num_experts,
        ),
        dense=True,
        imposed_routing=True,
        classifier=Classifier(
            names=lambda model: model.classes, classify=lambda model, routing: model.classify(routing)
        ),
        # the router sees the whole image: its tiles share the whole image's routing
        tiling=Tiling(supported=True, shared_routing=True),
        profile_parts=lambda model: model.profile_parts(),
    ),
    join=Join(
        companion="clip_router",
        role="router",
        join=join,
        missing="a LoRA-IR restoration network needs its CLIP router file too: pass it as "
        "router='setting1_router.pth' (--router FILE), or load both by the manifest name 'lora_ir.setting1'",
        alone="a LoRA-IR CLIP router alone restores nothing; load the restoration network (setting1_ir.pth) and pass "
        "this file as its router",
        place=_place_router,
    ),
)
