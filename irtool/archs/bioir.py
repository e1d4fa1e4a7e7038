"""BioIR: "Bio-Inspired Image Restoration" (Cui, Ren, Knoll; NeurIPS 2025).

A three-level U-Net (Restormer's level names) whose blocks replace attention with two cheap, mutually gating
"mixers" on the two halves of a projected feature map:
- P2F (official `L2H`): the first half, average-pooled to 16 x 16, acts as 256 prototypes; each pixel of the second
  half scores itself against them, a 1x1 conv turns the 256 scores into a 3x3 kernel per pixel, and that kernel
  filters the channel mean of the second half, which then scales the second half (x * (1 + filtered));
- F2P (official `H2L`): a 7x7 depthwise conv of the second half gates the first half, and a per-pixel 5x5 kernel
  (a 1x1 conv of the same map) filters its channel mean, which is added back.
The two results multiply, then a gated-GELU FFN follows. Downsampling is bilinear x0.5 + conv, upsampling bilinear
x2 + conv, and skips are fused by a 1x1 conv over the concatenation. There is no routing and no degradation
classifier: the network is blind and runs one path for every image.

Module attribute names equal the official checkpoints' (`patch_embed`, `encoder_level1..3`, `down1_2`, `down2_3`,
`decoder_level3..1`, `up3_2`, `up2_1`, `reduce_chan_level2`, `fuse2`, `fuse1`, `refinement`, `output`; inside blocks
`norm1`, `attn` (`conv`, `dw`, `l2h`, `h2l`, `project_out`), `norm2`, `ffn`), so `BioIR5D.ckpt` loads with
`load_state_dict(strict=True)` once Lightning's `net.` prefix is removed, and no renaming table.

Deliberate departures from the official code (github.com/c-yn/BioIR at ff61e47, `All_in_One/net/model.py`; the
single/composite-task file `Single_Composite/basicsr/models/archs/BioIR_arch.py` is the same network):
- P2F computes `conv1x1(einsum(high, pooled))` as `(W @ pooled^T) @ high + b`: the same sums reassociated, so the
  256-channel score map is never made at full resolution (outputs agree within 1e-5 in fp32; see the tests).
- LayerNorm is `F.layer_norm` on a channels-last view instead of `var`/`sqrt` on a `(B, HW, C)` copy: the same
  formula (biased variance, eps 1e-5 inside the root).
- Not modelled, because the official network ignores them: its `heads`, `LayerNorm_type` (its blocks are always
  built with `WithBias` norms) and `decoder` arguments. The official `reduce_chan_level2` conv is built but never
  used in the forward pass; it is kept (its weight is in every checkpoint) and equally unused here.
- `run` takes H and W multiples of 4 (`size_multiple`) and refuses others, and refuses sides under 12 px (the 5x5
  reflection pad of F2P at 1/4 scale needs 3 px; the official code fails there with a PyTorch error). The official
  demo reflect-pads to a multiple of 4 and crops back; `forward`, `irtool.archs.spec.run_padded` and the engine do the
  same.

This module imports torch only: no I/O, no device choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._keys import config_fields, count_children
from .spec import ArchSpec, Capabilities, Tiling, require_multiple, run_padded

ARCH = "bioir"

#: P2F's prototype grid side (16 x 16 pooled cells) and per-pixel kernel side; F2P's kernel and depthwise sides
P2F_GRID = 16
P2F_KERNEL = 3
F2P_KERNEL = 5
F2P_DEPTHWISE = 7

#: the smallest side `run` accepts: F2P reflect-pads its 1/4-scale map by 2 px, which needs 3 px there
MIN_SIDE = 4 * (F2P_KERNEL // 2 + 1)


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class BioIRConfig:
    """Hyperparameters of a BioIR network. The defaults are the released all-in-one `BioIR` (`BioIR5D.ckpt`)."""

    dim: int = 48
    #: blocks per level, full resolution first; each decoder level has as many blocks as its encoder level
    num_blocks: tuple[int, int, int] = (6, 6, 14)
    num_refinement_blocks: int = 4
    ffn_expansion_factor: float = 3.0
    #: bias in the mixers' and FFNs' convs and the output conv (the official `bias`)
    bias: bool = False
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if len(self.num_blocks) != 3 or min(self.num_blocks) < 1:
            raise ValueError(f"BioIR config: num_blocks must be three positive counts, got {self.num_blocks}")
        if self.dim < 1 or self.num_refinement_blocks < 0:
            raise ValueError("BioIR config: dim must be positive and num_refinement_blocks not negative")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (two bilinear x0.5 downsamplings, undone by two x2 upsamplings)."""
        return 4

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BioIRConfig:
        return cls(**config_fields(cls, d))


VARIANTS: dict[str, BioIRConfig] = {
    # all-in-one (three- and five-task) weights, official `All_in_One/net/model.py` defaults: ~15.9M parameters
    "BioIR": BioIRConfig(),
    # the single-task dehazing/deraining/desnowing and CDD-Base configs (`Single_Composite/options/CSD.yml` ...)
    "BioIR_base": BioIRConfig(num_blocks=(3, 3, 6)),
    # the smallest official config (`Single_Composite/options/CDD.yml`, `AGAN.yml`)
    "BioIR_small": BioIRConfig(dim=32, num_blocks=(1, 1, 2)),
    # small enough for unit tests (also the golden data's second config)
    "tiny": BioIRConfig(dim=8, num_blocks=(1, 1, 2), num_refinement_blocks=1, ffn_expansion_factor=2.0),
}


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


@dataclass
class BioIRResult:
    """Output of `BioIR.run`: the restored batch (raw, not clamped). BioIR does not route: `routing` is always None."""

    output: Tensor
    routing: None = None


class _NormParams(nn.Module):
    """Holds a LayerNorm's weight and bias under the official keys (`norm1.body.weight`, `norm1.body.bias`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every pixel (official `LayerNorm(dim, 'WithBias')`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = _NormParams(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.body.weight, self.body.bias, eps=1e-5)
        return y.permute(0, 3, 1, 2)


def _local_filter(x: Tensor, kernels: Tensor, size: int) -> Tensor:
    """Filter the channel mean of x (B, C, H, W) with a `size` x `size` kernel per pixel (kernels (B, size^2, H, W),
    reflection-padded): (B, 1, H, W)."""
    mean = x.mean(dim=1, keepdim=True)
    b, _, h, w = mean.shape
    patches = F.unfold(F.pad(mean, [size // 2] * 4, mode="reflect"), kernel_size=size).view(b, size * size, h, w)
    return (patches * kernels).sum(dim=1, keepdim=True)


class P2F(nn.Module):
    """The official `L2H`: per-pixel 3x3 kernels from each pixel's scores against 16 x 16 pooled prototypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(P2F_GRID**2, P2F_KERNEL**2, kernel_size=1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        b, c, h, w = high.shape
        prototypes = F.adaptive_avg_pool2d(low, (P2F_GRID, P2F_GRID)).flatten(2)  # (B, C, 256)
        # conv1x1(prototype scores) folded: (k, 256) @ (B, 256, C) -> (B, k, C), then one product with the pixels
        mix = torch.matmul(self.conv.weight.view(P2F_KERNEL**2, -1), prototypes.transpose(1, 2))
        kernels = torch.matmul(mix, high.flatten(2)).view(b, P2F_KERNEL**2, h, w)
        kernels = kernels + cast(Tensor, self.conv.bias).view(1, -1, 1, 1)
        return high * (1 + _local_filter(high, kernels, P2F_KERNEL))


class F2P(nn.Module):
    """The official `H2L`: the second half, depthwise-filtered, gates the first, then a per-pixel 5x5 filter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, F2P_DEPTHWISE, padding=F2P_DEPTHWISE // 2, groups=channels)
        self.cv2 = nn.Conv2d(channels, F2P_KERNEL**2, kernel_size=1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        high = self.dw(high)
        low = low * (high + 1)
        return low + _local_filter(low, self.cv2(high), F2P_KERNEL)


class Mixer(nn.Module):
    """The official `AttModule`: 1x1 + depthwise 3x3 projection to two halves, P2F x F2P, 1x1 out."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 2, kernel_size=1, bias=bias)
        self.dw = nn.Conv2d(channels * 2, channels * 2, 3, padding=1, groups=channels * 2, bias=bias)
        self.l2h = P2F()
        self.h2l = F2P(channels)
        self.project_out = nn.Conv2d(channels, channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        first, second = self.dw(self.conv(x)).chunk(2, dim=1)
        return self.project_out(self.h2l(first, second) * self.l2h(first, second))


class GatedFFN(nn.Module):
    """Restormer's gated-GELU feed-forward (official `FeedForward`)."""

    def __init__(self, channels: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class Block(nn.Module):
    """The official `AttBlock`: pre-norm mixer and pre-norm FFN, each with a residual."""

    def __init__(self, channels: int, expansion: float, bias: bool) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = Mixer(channels, bias)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GatedFFN(channels, expansion, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _blocks(count: int, channels: int, cfg: BioIRConfig) -> nn.Sequential:
    return nn.Sequential(*(Block(channels, cfg.ffn_expansion_factor, cfg.bias) for _ in range(count)))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Resize(nn.Module):
    """Bilinear resize by `scale`, then a 3x3 conv (official `Downsample`/`Upsample`, keys `body.1.weight`)."""

    def __init__(self, scale: float, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
            nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Fuse(nn.Module):
    """1x1 conv over [upsampled decoder features, encoder skip]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels, kernel_size=1)

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([up, skip], dim=1))


# --------------------------------------------------------------------------------------------------------------------
# The network


class BioIR(nn.Module):
    """BioIR. `forward(x)` restores a (B, C, H, W) batch in [0, 1] of any size (output not clamped); `run` takes
    sides that are multiples of 4 and returns a `BioIRResult`."""

    arch = ARCH

    def __init__(self, config: BioIRConfig | None = None) -> None:
        super().__init__()
        cfg = config or BioIRConfig()
        self.config = cfg
        d1, d2, d3 = cfg.dim, cfg.dim * 2, cfg.dim * 4
        n1, n2, n3 = cfg.num_blocks
        self.patch_embed = PatchEmbed(cfg.in_channels, d1)
        self.encoder_level1 = _blocks(n1, d1, cfg)
        self.down1_2 = Resize(0.5, d1, d2)
        self.encoder_level2 = _blocks(n2, d2, cfg)
        self.down2_3 = Resize(0.5, d2, d3)
        self.encoder_level3 = _blocks(n3, d3, cfg)
        self.decoder_level3 = _blocks(n3, d3, cfg)
        self.up3_2 = Resize(2.0, d3, d2)
        # built (and stored in every checkpoint) by the official code but never used in its forward pass
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=cfg.bias)
        self.decoder_level2 = _blocks(n2, d2, cfg)
        self.up2_1 = Resize(2.0, d2, d1)
        self.decoder_level1 = _blocks(n1, d1, cfg)
        self.refinement = _blocks(cfg.num_refinement_blocks, d1, cfg)
        self.fuse2 = Fuse(d2)
        self.fuse1 = Fuse(d1)
        self.output = nn.Conv2d(d1, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def run(self, x: Tensor, routing: None = None, *, dense: bool = False) -> BioIRResult:
        """Restore `x` (B, C, H, W); H and W must be multiples of 4 and at least 12 (the aligned path;
        `model(x)` takes any size).

        BioIR has no routing: a given `routing` is refused, and `dense` changes nothing (there are no experts)."""
        if routing is not None:
            raise ValueError("BioIR does not route: it takes no routing")
        require_multiple(x, self.config.size_multiple, "BioIR")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"BioIR: input {w}x{h} px is too small; both sides must be at least {MIN_SIDE} px")
        level1 = self.encoder_level1(self.patch_embed(x))
        level2 = self.encoder_level2(self.down1_2(level1))
        feats = self.decoder_level3(self.encoder_level3(self.down2_3(level2)))
        feats = self.decoder_level2(self.fuse2(self.up3_2(feats), level2))
        feats = self.decoder_level1(self.fuse1(self.up2_1(feats), level1))
        return BioIRResult(self.output(self.refinement(feats)) + x)

    def forward(self, x: Tensor, routing: None = None, *, dense: bool = False) -> Tensor:
        """Restore `x` (B, C, H, W) of any size: padded by the spec's rule (reflect, to a multiple of 4),
        restored, cropped back to H x W."""
        return run_padded(self, x, routing=routing, dense=dense).output


# --------------------------------------------------------------------------------------------------------------------
# Detection: which state dicts are BioIR, and their config, from keys and shapes alone

_SIGNATURE = (
    "patch_embed.proj.weight",
    "encoder_level1.0.attn.l2h.conv.weight",
    "encoder_level1.0.attn.h2l.cv2.weight",
    "encoder_level1.0.attn.h2l.dw.weight",
    "fuse1.conv.weight",
    "reduce_chan_level2.weight",
    "output.weight",
)


def detect(sd: Mapping[str, Tensor]) -> bool:
    """True when the (canonical) state dict has BioIR's signature keys (its P2F/F2P mixers, its fusions)."""
    return all(k in sd for k in _SIGNATURE)


def infer_config(sd: Mapping[str, Tensor]) -> BioIRConfig:
    """Read the full config off the tensors (raises KeyError/ValueError on a malformed state dict)."""
    dim, in_channels = (int(n) for n in sd["patch_embed.proj.weight"].shape[:2])
    counts = tuple(count_children(sd, f"encoder_level{i}") for i in (1, 2, 3))
    decoders = tuple(count_children(sd, f"decoder_level{i}") for i in (1, 2, 3))
    if decoders != counts:
        raise ValueError(f"BioIR: decoder levels have {decoders} blocks but encoder levels {counts}; they must match")
    p2f = tuple(sd["encoder_level1.0.attn.l2h.conv.weight"].shape[:2])
    f2p = tuple(sd["encoder_level1.0.attn.h2l.cv2.weight"].shape[:1]) + tuple(
        sd["encoder_level1.0.attn.h2l.dw.weight"].shape[2:]
    )
    if p2f != (P2F_KERNEL**2, P2F_GRID**2) or f2p != (F2P_KERNEL**2, F2P_DEPTHWISE, F2P_DEPTHWISE):
        raise ValueError(f"BioIR: mixer kernels {p2f}, {f2p} differ from the official 3x3/16x16 and 5x5/7x7 ones")
    return BioIRConfig(
        dim=dim,
        num_blocks=(counts[0], counts[1], counts[2]),
        num_refinement_blocks=count_children(sd, "refinement"),
        ffn_expansion_factor=_infer_expansion(sd, dim),
        bias="encoder_level1.0.attn.conv.bias" in sd,
        in_channels=in_channels,
        out_channels=int(sd["output.weight"].shape[0]),
    )


def _infer_expansion(sd: Mapping[str, Tensor], dim: int) -> float:
    """The FFN factor f with int(C * f) equal to every level's hidden width (3.0 stays 3.0, 2.66 stays 2.66)."""
    widths = {dim * 2**i: int(sd[f"encoder_level{i + 1}.0.ffn.project_in.weight"].shape[0]) // 2 for i in range(3)}
    widest, hidden = max(widths.items())
    for f in (round(hidden / widest, 1), round(hidden / widest, 2), round(hidden / widest, 3), (hidden + 0.5) / widest):
        if all(int(c * f) == h for c, h in widths.items()):
            return f
    raise ValueError(f"BioIR: FFN widths {sorted(widths.values())} fit no single expansion factor")


# --------------------------------------------------------------------------------------------------------------------
# What the rest of irtool reads about BioIR


SPEC = ArchSpec(
    name=ARCH,
    title="BioIR",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=BioIRConfig.from_dict,
    build=BioIR,
    variants=VARIANTS,
    capabilities=Capabilities(
        size_multiple=lambda model: model.config.size_multiple,
        # the official demo reflect-pads to a multiple of 4 (`pad_input`)
        padding="reflect",
        # no routing, no experts, no degradation classifier: one path for every image
        routing=None,
        # no FFT or other op that fp16 lacks: all three precisions run
        precisions=("fp32", "bf16", "fp16"),
        # P2F pools each level to 16 x 16 over the whole input, so a tile sees its own prototypes (as the official
        # demo's --tile does): tiled output is close to, not equal to, the whole-image output
        tiling=Tiling(supported=True, shared_routing=False),
    ),
)
