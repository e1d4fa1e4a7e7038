"""AdaIR: "Adaptive All-in-One Image Restoration via Frequency Mining and Modulation" (Cui et al., ICLR 2025).

A Restormer U-Net (4 levels of transposed-attention blocks) with an adaptive frequency learning block (AFLB) after
the latent stage and after decoder levels 3 and 2. Each AFLB resizes the input image to the features' size, embeds
it (3x3 conv), and splits it in the Fourier domain into a low band (a centred box whose half-sides are
`side // 128 * rate`, the two rates a per-image sigmoid) and the rest. Each band attends to the features (channel
cross-attention), the two modulate each other (a spatial gate from the high band on the low, a channel gate from the
low band on the high), and the result attends back to the features, added with learnt per-channel scales. There is
no routing: nothing is chosen per image except the two band rates, and they are not reported.

Module attribute names equal those of the official checkpoints (`patch_embed`, `encoder_level1`, `down1_2`,
`latent`, `fre1`..`fre3`, `up4_3`, `reduce_chan_level3`, `decoder_level3`, ..., `refinement`, `output`; inside
blocks `norm1`, `attn`, `norm2`, `ffn`; inside the AFLB `conv1`, `rate_conv`, `channel_cross_l`, `channel_cross_h`,
`channel_cross_agg`, `frequency_refine.SpatialGate`, `frequency_refine.ChannelGate`, `para1`, `para2`), so official
weights load with `load_state_dict(strict=True)` and no renaming table.

Deliberate departures from the official code (github.com/c-yn/AdaIR, `net/model.py` at ccb8b98):
- `run` takes H and W multiples of 8 (`size_multiple`) and refuses others. The official network has no padding at
  all: its test script centre-crops every image to a multiple of 16 (`crop_img(base=16)`), which `irtool eval`
  reproduces. For other sizes `forward`, the engine and `irtool.archs.spec.run_padded` reflect-pad (as Restormer's demo
  does) and crop back; the band rates then see the padded canvas.
- The Fourier split runs in float32 whatever the working precision, and the band rates come from a float32 sigmoid
  (the official code takes them from the working dtype; in fp32 the two are the same numbers).
- The cross-attention maps of the AFLBs are computed in float32 whatever the working precision: their queries are
  all zeros wherever the low band is empty (every image under 512 px), and the official normalisation of zeros
  gives 0/0 = NaN in fp16. In fp32 nothing changes.
- The official `decoder=False` option (the same U-Net without the three AFLBs, i.e. plain Restormer) is not
  modelled: no weights were released for it and its state dict is indistinguishable from Restormer's.
- The AFLB's image embedding takes `in_channels` channels (the official code hard-codes 3, so only 3 works there).
- The official AFLB also holds `conv` and `score_gen`, which its forward never uses; they are kept (unused), so
  official checkpoints load strictly.

What runs faster than the official code keeps its numbers (within 1e-5; `run(x, reference=True)` runs the plain
formulation the tests compare against): the Fourier split masks the spectrum where it lies instead of rolling it to
the centre and back (a permutation: exact), computes one inverse FFT (high = |x - low|, since the two bands sum to x;
within 1e-6), and skips the FFTs when the low band is empty, which it is for every feature map under 256 px on a side
(low = 0, high = |x|); the FFNs make their hidden halves one at a time (MoCE-IR's `GatedFFN`, the same sums).
MoCE-IR's faster attention (channels-last activations, a Gram matrix divided by the q/k norms, `attn @ v` folded into
the output conv) is not used: it is as close to float64 as the official order, but on images of a quarter megapixel
and more the two orders drift ~2e-5 apart at AdaIR's output (measured at 528x536 against the official code and
float64), beyond the 1e-5 this port keeps; the attention here runs in the official order, NCHW.

This module imports torch only: no I/O, no device choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._keys import config_fields, count_children
from .moce_ir import (
    ChannelAttention,
    ChannelLayerNorm,
    Downsample,
    GatedFFN,
    PatchEmbed,
    Upsample,
    _attend_and_project,
    _channel_attention_map,
)
from .spec import ArchSpec, Capabilities, Tiling, require_multiple, run_padded

ARCH = "adair"

#: the official `fft(x, n=128)`: a feature map side of s pixels gives the low band half-sides of at most s // 128 - 1
BAND_DIVISOR = 128


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class AdaIRConfig:
    """Hyperparameters of an AdaIR network. The defaults are the released network (`AdaIR(decoder=True)`, 28.8M)."""

    dim: int = 48
    #: transformer blocks per encoder level (full resolution first), then the latent stage; decoder level i repeats
    #: encoder level i's count
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    #: attention heads per level (full resolution first); the last one is the latent's; every AFLB uses heads[2]
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    #: bias in the attention and FFN convs and the skip fusions
    bias: bool = False
    #: "WithBias" or "BiasFree" LayerNorms
    layernorm_type: str = "WithBias"
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if len(self.num_blocks) != 4 or len(self.heads) != 4:
            raise ValueError(
                f"AdaIR config: num_blocks ({len(self.num_blocks)}) and heads ({len(self.heads)}) must each list the "
                "4 levels (3 encoder levels and the latent)"
            )
        if self.layernorm_type not in ("WithBias", "BiasFree"):
            raise ValueError("AdaIR config: layernorm_type must be 'WithBias' or 'BiasFree'")
        for level, heads in enumerate(self.heads):
            if (self.dim * 2**level) % heads:
                raise ValueError(
                    f"AdaIR config: level {level + 1} has {self.dim * 2**level} channels, not divisible by its "
                    f"{heads} heads"
                )
        if (self.dim * 2) % self.heads[2] or (self.dim * 2) // 16 < 1:
            raise ValueError(
                f"AdaIR config: dim {self.dim} is too small for the frequency blocks (heads[2] {self.heads[2]} must "
                "divide 2·dim, and 2·dim must be at least 16)"
            )

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (three PixelUnshuffle(2))."""
        return 8

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdaIRConfig:
        return cls(**config_fields(cls, d))


VARIANTS: dict[str, AdaIRConfig] = {
    # the only released network: AdaIR(decoder=True) with the official defaults (three- and five-task weights)
    "AdaIR": AdaIRConfig(),
    # small enough for unit tests and the golden data
    "tiny": AdaIRConfig(dim=8, num_blocks=(1, 1, 1, 2), num_refinement_blocks=1),
}


@dataclass
class AdaIRResult:
    """Output of `AdaIR.run`: the restored batch. AdaIR has no routing (`routing` is always None)."""

    output: Tensor
    routing: None = None


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


class TransformerBlock(nn.Module):
    """Restormer's block: pre-norm transposed (channel) attention, then pre-norm gated-dconv FFN."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm_bias: bool) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, norm_bias)
        self.attn = ChannelAttention(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim, norm_bias)
        self.ffn = GatedFFN(dim, expansion, bias)

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        # attention always in the official order (see the module docstring); the FFN's fast path is the same sums
        x = x + self.attn(self.norm1(x, fast), False)
        return x + self.ffn(self.norm2(x, fast), fast)


class TransformerStage(nn.ModuleList):
    """Blocks in a row; a list so that the keys read `encoder_level1.{i}.*` as the official nn.Sequential's do."""

    def __init__(self, dim: int, heads: int, blocks: int, cfg: AdaIRConfig) -> None:
        norm_bias = cfg.layernorm_type == "WithBias"
        super().__init__(
            TransformerBlock(dim, heads, cfg.ffn_expansion_factor, cfg.bias, norm_bias) for _ in range(blocks)
        )

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        for block in self:
            x = block(x, fast)
        return x


class CrossChannelAttention(nn.Module):
    """Channel attention with queries from `x` and keys/values from `y`, 3x3 depthwise projections (the official
    `Chanel_Cross_Attention`)."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"AdaIR cross-attention: queries {tuple(x.shape)} and keys {tuple(y.shape)} differ")
        q = self.q_dwconv(self.q(x))
        k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)
        # float32: the low band is all zeros on images under 512 px, and normalising zeros in fp16 (whose eps 1e-12
        # rounds to 0) gives 0/0
        attn = _channel_attention_map(q.float(), k.float(), self.num_heads, self.temperature, False)
        return _attend_and_project(attn.to(v.dtype), v, self.project_out, False)


class SpatialGate(nn.Module):
    """The H-L unit: a per-pixel gate from the channel max and mean (7x7 conv, sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))


class ChannelGate(nn.Module):
    """The L-H unit: a per-channel gate from the spatial mean and max through one shared MLP (C -> C/16 -> C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // 16, 1, bias=False), nn.ReLU(), nn.Conv2d(dim // 16, dim, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True)))


class FrequencyModulation(nn.Module):
    """FMoM: the high band gates the low one spatially, the low band gates the high one per channel; summed, 1x1
    (the official `FreRefine`; its attribute names are the checkpoint keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.SpatialGate = SpatialGate()
        self.ChannelGate = ChannelGate(dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.proj(low * self.SpatialGate(high) + high * self.ChannelGate(low))


def _band_half_sides(rates: Tensor, h: int, w: int) -> list[tuple[int, int]]:
    """Per image, the low band's half-height and half-width in frequency bins: int(side // 128 * rate), as the
    official code computes them (a float32 product truncated)."""
    half_h = (h // BAND_DIVISOR * rates[:, 0].reshape(-1)).int()
    half_w = (w // BAND_DIVISOR * rates[:, 1].reshape(-1)).int()
    return list(zip(half_h.tolist(), half_w.tolist()))


def _centred_box_mask(sides: list[tuple[int, int]], c: int, h: int, w: int, device: torch.device) -> Tensor:
    """The official mask (B, C, H, W): ones on the centred box [h/2 - a, h/2 + a) x [w/2 - b, w/2 + b) of a spectrum
    rolled by (h/2, w/2)."""
    mask = torch.zeros(len(sides), c, h, w, device=device)
    for i, (a, b) in enumerate(sides):
        mask[i, :, h // 2 - a : h // 2 + a, w // 2 - b : w // 2 + b] = 1
    return mask


def _corner_mask(sides: list[tuple[int, int]], h: int, w: int, device: torch.device) -> Tensor:
    """The same mask on the unrolled spectrum, (B, 1, H, W): rolling by (h/2, w/2) moves frequency bin k to
    k + h/2, so the centred box is the bins -a..a-1 (mod H) by -b..b-1 (mod W), i.e. the four corners."""
    mask = torch.zeros(len(sides), 1, h, w, device=device)
    for i, (a, b) in enumerate(sides):
        if a and b:
            rows = torch.cat([torch.arange(a), torch.arange(h - a, h)]).to(device)
            cols = torch.cat([torch.arange(b), torch.arange(w - b, w)]).to(device)
            mask[i, 0, rows[:, None], cols] = 1
    return mask


class FrequencyBlock(nn.Module):
    """AFLB: mines a low and a high band from the resized input image and modulates the features with them (the
    official `FreModule`)."""

    def __init__(self, dim: int, heads: int, bias: bool, in_channels: int) -> None:
        super().__init__()
        # `conv` and `score_gen` are in the official module and its checkpoints but its forward never uses them
        self.conv = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.score_gen = nn.Conv2d(2, 2, 7, padding=3)
        self.para1 = nn.Parameter(torch.zeros(dim, 1, 1))
        self.para2 = nn.Parameter(torch.ones(dim, 1, 1))
        # the official names are swapped: `channel_cross_l` takes the high band, `channel_cross_h` the low one
        self.channel_cross_l = CrossChannelAttention(dim, heads, bias)
        self.channel_cross_h = CrossChannelAttention(dim, heads, bias)
        self.channel_cross_agg = CrossChannelAttention(dim, heads, bias)
        self.frequency_refine = FrequencyModulation(dim)
        self.rate_conv = nn.Sequential(
            nn.Conv2d(dim, dim // 8, 1, bias=False), nn.GELU(), nn.Conv2d(dim // 8, 2, 1, bias=False)
        )

    def forward(self, image: Tensor, feats: Tensor, fast: bool) -> Tensor:
        guide = F.interpolate(image, feats.shape[-2:], mode="bilinear", align_corners=False)
        high, low = self.bands(guide, fast)
        high = self.channel_cross_l(high, feats)
        low = self.channel_cross_h(low, feats)
        mixed = self.frequency_refine(low, high)
        return self.channel_cross_agg(feats, mixed) * self.para1 + feats * self.para2

    def bands(self, guide: Tensor, fast: bool) -> tuple[Tensor, Tensor]:
        """(high, low): the magnitudes of the embedded guide's two frequency bands, in the embedding's dtype."""
        x = self.conv1(guide)
        b, c, h, w = x.shape
        rates = torch.sigmoid(self.rate_conv(F.adaptive_avg_pool2d(x, 1)).float())
        sides = _band_half_sides(rates, h, w)
        x32 = x.float()
        if not fast:
            mask = _centred_box_mask(sides, c, h, w, x.device)
            spectrum = torch.roll(torch.fft.fft2(x32, norm="forward"), shifts=(h // 2, w // 2), dims=(2, 3))
            bands = [
                torch.roll(spectrum * part, shifts=(-(h // 2), -(w // 2)), dims=(2, 3)) for part in (1 - mask, mask)
            ]
            high, low = (torch.fft.ifft2(band, norm="forward").abs() for band in bands)
        elif not any(a and b for a, b in sides):
            high, low = x32.abs(), torch.zeros_like(x32)
        else:
            spectrum = torch.fft.fft2(x32, norm="forward") * _corner_mask(sides, h, w, x.device)
            low_c = torch.fft.ifft2(spectrum, norm="forward")
            high, low = (x32 - low_c).abs(), low_c.abs()
        return high.to(x.dtype), low.to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# The network


class AdaIR(nn.Module):
    """AdaIR. `forward(x)` restores a (B, C, H, W) batch in [0, 1] of any size (output not clamped); `run` takes sides
    that are multiples of 8."""

    arch = ARCH

    def __init__(self, config: AdaIRConfig | None = None) -> None:
        super().__init__()
        cfg = config or AdaIRConfig()
        self.config = cfg
        dims = [cfg.dim * 2**i for i in range(4)]
        blocks, heads = cfg.num_blocks, cfg.heads

        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.dim)
        self.fre1 = FrequencyBlock(dims[3], heads[2], cfg.bias, cfg.in_channels)
        self.fre2 = FrequencyBlock(dims[2], heads[2], cfg.bias, cfg.in_channels)
        self.fre3 = FrequencyBlock(dims[1], heads[2], cfg.bias, cfg.in_channels)
        self.encoder_level1 = TransformerStage(dims[0], heads[0], blocks[0], cfg)
        self.down1_2 = Downsample(dims[0])
        self.encoder_level2 = TransformerStage(dims[1], heads[1], blocks[1], cfg)
        self.down2_3 = Downsample(dims[1])
        self.encoder_level3 = TransformerStage(dims[2], heads[2], blocks[2], cfg)
        self.down3_4 = Downsample(dims[2])
        self.latent = TransformerStage(dims[3], heads[3], blocks[3], cfg)
        self.up4_3 = Upsample(dims[3])
        self.reduce_chan_level3 = nn.Conv2d(dims[3], dims[2], 1, bias=cfg.bias)
        self.decoder_level3 = TransformerStage(dims[2], heads[2], blocks[2], cfg)
        self.up3_2 = Upsample(dims[2])
        self.reduce_chan_level2 = nn.Conv2d(dims[2], dims[1], 1, bias=cfg.bias)
        self.decoder_level2 = TransformerStage(dims[1], heads[1], blocks[1], cfg)
        self.up2_1 = Upsample(dims[1])
        # level 1 of the decoder and the refinement keep the 2·dim channels of the concatenated skip (as Restormer)
        self.decoder_level1 = TransformerStage(dims[1], heads[0], blocks[0], cfg)
        self.refinement = TransformerStage(dims[1], heads[0], cfg.num_refinement_blocks, cfg)
        self.output = nn.Conv2d(dims[1], cfg.out_channels, 3, padding=1, bias=cfg.bias)

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def run(self, x: Tensor, routing: None = None, *, dense: bool = False, reference: bool = False) -> AdaIRResult:
        """Restore `x` (B, C, H, W); H and W must be multiples of 8 (the aligned path; `model(x)` takes any size).

        routing: AdaIR has none; anything but None is refused. dense: accepted for the contract's sake (no experts,
            so dense and sparse are the same pass).
        reference: the plain formulation of the official code (the spectrum rolled to the centre, masked twice and
            inverted twice; the FFN's hidden layer made whole), the yardstick the fast paths are tested against.
        """
        if routing is not None:
            raise ValueError("AdaIR has no routing to impose")
        require_multiple(x, self.config.size_multiple, "AdaIR")
        fast = not reference
        x = x.contiguous()
        level1 = self.encoder_level1(self.patch_embed(x), fast)
        level2 = self.encoder_level2(self.down1_2(level1), fast)
        level3 = self.encoder_level3(self.down2_3(level2), fast)
        feats = self.latent(self.down3_4(level3), fast)
        feats = self.fre1(x, feats, fast)
        feats = self.reduce_chan_level3(torch.cat([self.up4_3(feats), level3], dim=1))
        feats = self.fre2(x, self.decoder_level3(feats, fast), fast)
        feats = self.reduce_chan_level2(torch.cat([self.up3_2(feats), level2], dim=1))
        feats = self.fre3(x, self.decoder_level2(feats, fast), fast)
        feats = self.decoder_level1(torch.cat([self.up2_1(feats), level1], dim=1), fast)
        out = self.output(self.refinement(feats, fast)) + x
        return AdaIRResult(out.contiguous())

    def forward(self, x: Tensor, routing: None = None, *, dense: bool = False) -> Tensor:
        """Restore `x` (B, C, H, W) of any size: padded by the spec's rule (reflect, to a multiple of 8),
        restored, cropped back to H x W."""
        return run_padded(self, x, routing=routing, dense=dense).output


# --------------------------------------------------------------------------------------------------------------------
# Detection: which state dicts are AdaIR, and their config, from keys and shapes alone

_SIGNATURE = (
    "patch_embed.proj.weight",
    "encoder_level1.0.attn.temperature",
    "latent.0.attn.qkv.weight",
    "fre1.conv1.weight",
    "fre1.rate_conv.0.weight",
    "fre1.frequency_refine.SpatialGate.spatial.weight",
    "fre3.channel_cross_agg.temperature",
)


def detect(sd: Mapping[str, Tensor]) -> bool:
    """True when the (canonical) state dict has AdaIR's signature keys: a Restormer U-Net with the frequency blocks
    (PromptIR's prompts, MoCE-IR's `enc`/`dec` and BioIR's attention modules have none of them)."""
    return all(k in sd for k in _SIGNATURE)


def infer_config(sd: Mapping[str, Tensor]) -> AdaIRConfig:
    """Read the full config off the tensors (raises KeyError/ValueError on a malformed state dict)."""
    dim, in_channels = sd["patch_embed.proj.weight"].shape[:2]
    stages = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    heads = tuple(int(sd[f"{stage}.0.attn.temperature"].shape[0]) for stage in stages)
    widths = {int(dim) * 2**i: sd[f"{stage}.0.ffn.project_in.weight"].shape[0] // 2 for i, stage in enumerate(stages)}
    return AdaIRConfig(
        dim=int(dim),
        num_blocks=tuple(count_children(sd, stage) for stage in stages),
        num_refinement_blocks=count_children(sd, "refinement"),
        heads=heads,
        ffn_expansion_factor=_expansion_factor(widths),
        bias="encoder_level1.0.attn.qkv.bias" in sd,
        layernorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in sd else "BiasFree",
        in_channels=int(in_channels),
        out_channels=int(sd["output.weight"].shape[0]),
    )


def _expansion_factor(hidden_by_channels: Mapping[int, int]) -> float:
    """The FFN factor f with int(C * f) equal to the hidden width at every level: the shortest decimal that fits
    (2.66, not 1021/384), found from the widest level, which pins f down most precisely."""
    channels, hidden = max(hidden_by_channels.items())
    candidates = [round(hidden / channels, digits) for digits in (1, 2, 3)] + [(hidden + 0.5) / channels]
    fitting = [f for f in candidates if all(int(c * f) == n for c, n in hidden_by_channels.items())]
    if not fitting:
        raise ValueError(f"FFN widths {sorted(hidden_by_channels.values())} fit no single expansion factor")
    return fitting[0]


# --------------------------------------------------------------------------------------------------------------------
# What the rest of irtool reads about AdaIR


SPEC = ArchSpec(
    name=ARCH,
    title="AdaIR",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=AdaIRConfig.from_dict,
    build=AdaIR,
    variants=VARIANTS,
    capabilities=Capabilities(
        size_multiple=lambda model: model.config.size_multiple,
        # the official test crops to 16 instead of padding; reflect is what Restormer's demo (its base) does
        padding="reflect",
        routing=None,  # no routing: nothing to report, impose or share
        # the Fourier split runs in float32 under any autocast; everything else follows the autocast rules
        precisions=("fp32", "bf16", "fp16"),
        # channel attention, gates and band rates read the whole image: tiles approximate it (no routing to share)
        tiling=Tiling(supported=True, shared_routing=False),
        reference_path=True,
    ),
)
