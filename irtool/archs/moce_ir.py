"""MoCE-IR: "Complexity Experts are Task-Discriminative Learners for Any Image Restoration" (Zamfir et al., CVPR 2025).

A Restormer-style U-Net. The encoder, latent and refinement stages are plain transformer blocks (channel attention
+ gated FFN). Every decoder block is a MoCE block: a shared channel attention, a router that picks one (top-k)
"complexity expert" per image, and a cross-attention that lets the expert output steer the shared features. The
experts differ in cost: expert e works at rank C/2^(E-1-e) with FFT windows of 4·2^e pixels.

Module attribute names equal those of the official checkpoints (`patch_embed`, `enc`, `latent`, `dec`, `refinement`,
`output`, and inside blocks `norms`, `mixer`, `ffn`, `shared`, `proj`, `adapter`, `routing`), so official weights load
with `load_state_dict(strict=True)` and no renaming table.

Deliberate departures from the official code (github.com/eduardzamfir/MoCE-IR, `src/net/moce_ir.py`):
- Eval routing is deterministic. The official router adds N(0, (1/E)^2) noise to its logits in eval too (MoCE-IR
  issue #19), so expert choice is random at test time; `run(..., routing_noise=...)` re-enables it on request.
- Each image of a batch runs only its own top-k experts. The official eval path gives every image the gated sum of
  the experts chosen by *all* images of the batch, so it is only correct at batch 1.
- Any size. The official network has no padding rule: its forward needs H and W multiples of 2^(levels-1) and its
  test centre-crops images to multiples of 16. Here `model(x)` reflect-pads to `size_multiple` and crops back (the
  spec's `padding`, which the engine, tiles and evaluation share); `run` is the aligned path and refuses other
  sizes.
- The official `stage_depth`/`depth_type` options repeat the very same expert computation `depth` times and keep the
  last result; they change neither the weights nor the output, so they are not modelled here.

Inference is faster than the official code without changing its numbers (all within 1e-5; `run(x, reference=True)`
runs the plain formulation the tests and `irtool bench` compare against): activations stay channels-last, where
LayerNorm is one fused kernel on a free view and depthwise convs are fast; channel attention divides a small Gram
matrix by the q/k norms instead of normalising q and k, and folds `attn @ v` into its output conv; wide
intermediates are freed early, or made in channel slices on large images. On CPUs without autograd, convolutions
run through oneDNN with prepacked weights and the elementwise step after them (GELU, SiLU, gate, residual add) fused
in (`PACKED_CONVS`). Which experts run is decided on the host (one sync per MoCE layer, none for an imposed routing),
so a fixed routing can be captured in a CUDA graph.

This module imports torch only: no I/O, no device choice.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._keys import config_fields, count_children
from .spec import ArchSpec, Capabilities, RoutingReport, Tiling, require_multiple, run_padded

ARCH = "moce_ir"

RANK_RULES = ("spread", "constant", "lin", "double", "exp", "fact")


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MoCEIRConfig:
    """Hyperparameters of a MoCE-IR network. The defaults are the released `MoCE_IR` (dim 48)."""

    dim: int = 48
    #: transformer blocks per encoder level (full resolution first), then the latent stage
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    #: MoCE blocks per decoder level, listed from full resolution down, as the official `num_dec_blocks`
    #: (so `dec.0`, the lowest-resolution decoder, has `num_dec_blocks[-1]` blocks)
    num_dec_blocks: tuple[int, ...] = (2, 4, 4)
    num_refinement_blocks: int = 4
    #: attention heads per level (full resolution first); the last one is the latent's
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.0
    num_experts: int = 4
    top_k: int = 1
    #: how expert ranks grow with the expert index; "spread" is C/8, C/4, C/2, C for four experts
    rank_type: str = "spread"
    #: base rank for the rank rules other than "spread"
    rank: int = 2
    #: how the `complexity` buffer is normalised: "max", "min" or "none"
    complexity_scale: str = "max"
    #: multiply the importance loss by the expert complexity (the paper's complexity bias); training only
    with_complexity: bool = False
    #: bias in the decoder's attention/FFN convs, the skip fusions and the output conv
    bias: bool = False
    #: "WithBias" or "BiasFree" LayerNorms in the transformer blocks
    layernorm_type: str = "WithBias"
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        levels = len(self.num_blocks)
        if levels < 2 or len(self.heads) != levels or len(self.num_dec_blocks) != levels - 1:
            raise ValueError(
                f"MoCE-IR config: num_blocks ({len(self.num_blocks)}), heads ({len(self.heads)}) and "
                f"num_dec_blocks ({len(self.num_dec_blocks)}) must describe the same number of levels"
            )
        if self.rank_type not in RANK_RULES:
            raise ValueError(f"MoCE-IR config: unknown rank_type {self.rank_type!r}; one of {', '.join(RANK_RULES)}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"MoCE-IR config: top_k must be in 1..{self.num_experts}, got {self.top_k}")
        if self.layernorm_type not in ("WithBias", "BiasFree"):
            raise ValueError("MoCE-IR config: layernorm_type must be 'WithBias' or 'BiasFree'")
        if self.complexity_scale not in ("max", "min", "none"):
            raise ValueError("MoCE-IR config: complexity_scale must be 'max', 'min' or 'none'")

    @property
    def levels(self) -> int:
        return len(self.num_blocks)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one PixelUnshuffle(2) per encoder level)."""
        return 2 ** (self.levels - 1)

    @property
    def freq_dim(self) -> int:
        return self.dim * 2 ** (self.levels - 1)

    def expert_ranks(self, channels: int) -> list[int]:
        """Rank of each expert in a MoCE block with `channels` channels (official `rank_type` rules)."""
        e = range(self.num_experts)
        if self.rank_type == "spread":
            return [channels // 2**i for i in e][::-1]
        if self.rank_type == "constant":
            return [self.rank for _ in e]
        if self.rank_type == "lin":
            return [self.rank + i for i in e]
        if self.rank_type == "double":
            return [self.rank + 2 * i for i in e]
        if self.rank_type == "exp":
            return [self.rank ** (i + 1) for i in e]
        return [math.factorial(self.rank + i) for i in e]  # "fact"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MoCEIRConfig:
        return cls(**config_fields(cls, d))

    @classmethod
    def from_official_kwargs(cls, kw: Mapping[str, Any]) -> MoCEIRConfig:
        """Build from the official `MoCEIR(**kwargs)` arguments (as in `src/options.py` or the reference configs)."""
        renames = {"topk": "top_k", "LayerNorm_type": "layernorm_type", "inp_channels": "in_channels"}
        ignored = {"levels", "expert_layer", "depth_type", "stage_depth"}  # derived, fixed, or without effect
        out: dict[str, Any] = {}
        for key, value in kw.items():
            if key in ignored:
                continue
            out[renames.get(key, key)] = value
        return cls.from_dict(out)


VARIANTS: dict[str, MoCEIRConfig] = {
    "MoCE_IR": MoCEIRConfig(dim=48),
    "MoCE_IR_S": MoCEIRConfig(dim=32),
    # small enough for unit tests; equals the official golden-test config
    "tiny": MoCEIRConfig(dim=16, num_blocks=(1, 1, 1, 2), num_dec_blocks=(1, 2, 2), num_refinement_blocks=1),
}


# --------------------------------------------------------------------------------------------------------------------
# Routing record


@dataclass
class Routing:
    """What the routers decided for a batch: per image, per MoCE layer (in forward order), the top-k experts.

    experts: (B, L, k) int64 expert indices, best first.
    gates:   (B, L, k) float, the softmax probability of each chosen expert (the weight on its output).
    logits:  (B, L, E) float, the clean router logits (no noise); None when the routing was imposed from outside.
    """

    experts: Tensor
    gates: Tensor
    logits: Tensor | None = None
    #: a CPU copy of `experts`, kept when the routing moves to an accelerator: an imposed routing then picks its
    #: experts without a device sync, so the forward can be captured in a CUDA graph
    host_experts: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return self.experts.shape[1]

    def __len__(self) -> int:
        return self.experts.shape[0]

    def summary(self) -> tuple[list[list[int]], list[list[float]]]:
        """The first image's experts and gates, (layers, k) each."""
        return self.experts[0].tolist(), self.gates[0].float().tolist()

    def consensus(self) -> Routing:
        """One routing for the whole batch: per layer, the mean of the images' router probabilities; its top-k are
        the experts, their mean probabilities the gates (as the model's own gates are probabilities), and its log the
        logits, so that a routing calibration names it from the mean routing signature. An imposed routing (no
        logits) gives its middle image's."""
        if self.logits is None:
            return self[len(self) // 2]
        probs = self.logits.float().softmax(dim=-1).mean(dim=0, keepdim=True)
        gates, experts = probs.topk(self.experts.shape[-1], dim=-1)
        return Routing(experts.cpu(), gates.cpu(), probs.clamp_min(1e-12).log().cpu())

    def _host(self) -> Tensor | None:
        if self.host_experts is not None:
            return self.host_experts
        return self.experts if self.experts.device.type == "cpu" else None

    def __getitem__(self, index: int | slice | Tensor) -> Routing:
        """The routing of a subset of the batch (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        host = self._host()
        return Routing(
            self.experts[index],
            self.gates[index],
            None if self.logits is None else self.logits[index],
            None if host is None else host[index.cpu() if isinstance(index, Tensor) else index],
        )

    def to(self, device: torch.device | str) -> Routing:
        return Routing(
            self.experts.to(device),
            self.gates.to(device),
            None if self.logits is None else self.logits.to(device),
            self._host(),
        )

    @staticmethod
    def cat(parts: list[Routing]) -> Routing:
        logit_parts = [p.logits for p in parts if p.logits is not None]
        logits = torch.cat(logit_parts) if len(logit_parts) == len(parts) else None
        hosts = [h for h in (p._host() for p in parts) if h is not None]
        host = torch.cat(hosts) if len(hosts) == len(parts) else None
        return Routing(torch.cat([p.experts for p in parts]), torch.cat([p.gates for p in parts]), logits, host)


@dataclass
class MoCEResult:
    """Output of `MoCEIR.run`: the restored batch, the routing that produced it, and (training) the aux loss."""

    output: Tensor
    routing: Routing
    aux_loss: Tensor | None = None


@dataclass
class _Pass:
    """Per-forward state threaded through the MoCE layers: imposed routing in, decisions and losses out."""

    imposed: Routing | None = None
    noise: bool | torch.Generator = False
    dense: bool = False
    #: the fast paths (default) or the plain reference formulation (`run(..., reference=True)`)
    fast: bool = True
    layer: int = 0
    experts: list[Tensor] = field(default_factory=list)
    gates: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    aux: list[Tensor] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


class _NormParams(nn.Module):
    """Holds the affine parameters so that their keys read `<norm>.body.weight` as in the official checkpoints."""

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


def _channels_last(x: Tensor) -> bool:
    """True when the channels are the fastest-moving dimension (a channels-last tensor or a channel slice of one)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor, eps 1e-5, biased variance.

    The official code rearranges to (B, H·W, C) and back for every call. On a channels-last tensor that layout is
    a free view, so the fused `F.layer_norm` kernel runs on it directly; otherwise the statistics are taken along
    dim 1 in place. "BiasFree" divides by the standard deviation without subtracting the mean.
    """

    def __init__(self, dim: int, with_bias: bool = True) -> None:
        super().__init__()
        self.body = _NormParams(dim, with_bias)

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        w, b = self.body.weight, self.body.bias
        if fast and b is not None and _channels_last(x) and x.dtype == w.dtype:
            return F.layer_norm(x.permute(0, 2, 3, 1), w.shape, w, b, 1e-5).permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        if b is None:
            return x * torch.rsqrt(var + 1e-5) * w.view(1, -1, 1, 1)
        return (x - mean) * torch.rsqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


# --------------------------------------------------------------------------------------------------------------------
# Prepacked oneDNN convolutions (CPU inference)

#: the experts' window FFTs run a band of window rows of about this many bytes (float32) at a time (FFTAttention)
FFT_BAND_BYTES = 1 << 20

#: CPU inference (no autograd, fp32, channels-last activations): convolutions call oneDNN directly with their weights
#: reordered once into its blocked layout and cached, and the elementwise step that follows a conv (GELU, SiLU, the
#: FFN gate, the residual add) runs inside it as a post-op instead of as one more pass over memory (what inductor does
#: on CPUs). Same numbers within 1e-5 (tests/test_moce_ir_fast.py); False runs F.conv2d everywhere (for ablations).
PACKED_CONVS = True

_MKLDNN_OPS = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _onednn_inference(x: Tensor) -> bool:
    """CPU inference where the prepacked oneDNN convs are on: no autograd (training and gradient checks keep
    F.conv2d)."""
    return bool(
        PACKED_CONVS
        and _MKLDNN_OPS
        and torch.backends.mkldnn.enabled
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
    )


def _packable(x: Tensor) -> bool:
    """True when convolutions on `x` may take the prepacked, fused oneDNN path: CPU inference, fp32 (or bf16, the
    network's bf16 copy under CPU autocast: `MoCEIR._bf16_copy`) channels-last, no autocast (which would cast the
    operands)."""
    return bool(
        _onednn_inference(x)
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
    )


@dataclass
class _PackedWeight:
    """A conv weight (or an output-channel slice of it) in oneDNN's layout, and what it was packed from: the
    parameter object, its storage (held, so that its address cannot be reused by another tensor), its in-place version
    (load_state_dict and optimiser steps bump it) and the input shape it was packed for."""

    source: Tensor
    storage: torch.UntypedStorage
    version: int
    input_shape: tuple[int, ...]
    packed: Tensor

    def fresh(self, weight: Tensor, input_shape: tuple[int, ...]) -> bool:
        return (
            self.source is weight
            and self.version == weight._version
            and self.storage.data_ptr() == weight.untyped_storage().data_ptr()
            and self.input_shape == input_shape
        )


#: per conv module, per output-channel slice: its packed weight. Weak keys: nothing is stored on the modules (so state
#: dicts, deep copies and pickles never see it) and a dropped model drops its cache.
_PACKED: weakref.WeakKeyDictionary[nn.Conv2d, dict[tuple[int, int], _PackedWeight]] = weakref.WeakKeyDictionary()


def _cpu_bf16_autocast(x: Tensor) -> bool:
    """True when `x` is about to run under CPU bf16 autocast without autograd, where `MoCEIR.run` runs its bf16 copy.
    Autocast itself would cast every conv's operands on every call and leave the prepacked path (slower than fp32:
    benchmarks/README.md); the copy's bf16 weights pack once for oneDNN's bf16 (AMX) kernels."""
    return bool(
        _onednn_inference(x)
        and x.is_floating_point()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


@dataclass
class _Bf16Copy:
    """A network's bf16 copy and the parameters it was made from (each tensor, its storage and in-place version,
    checked as `_PackedWeight.fresh` checks one weight)."""

    sources: list[tuple[Tensor, torch.UntypedStorage, int]]
    network: MoCEIR

    def fresh(self, network: MoCEIR) -> bool:
        tensors = [*network.parameters(), *network.buffers()]
        return len(tensors) == len(self.sources) and all(
            t is src and t._version == version and t.untyped_storage().data_ptr() == storage.data_ptr()
            for t, (src, storage, version) in zip(tensors, self.sources)
        )


#: per network: its bf16 copy for CPU autocast (weak keys, as `_PACKED`: nothing is stored on the module)
_BF16_COPIES: weakref.WeakKeyDictionary[nn.Module, _Bf16Copy] = weakref.WeakKeyDictionary()


def _packed_weight(conv: nn.Conv2d, lo: int, hi: int, groups: int, x: Tensor) -> Tensor:
    weight = conv.weight
    slots = _PACKED.setdefault(conv, {})
    entry = slots.get((lo, hi))
    shape = tuple(x.shape)
    if entry is None or not entry.fresh(weight, shape):
        padding = cast(tuple[int, int], conv.padding)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach()[lo:hi], list(padding), list(conv.stride), list(conv.dilation), groups, list(shape)
        )
        entry = _PackedWeight(weight, weight.untyped_storage(), weight._version, shape, packed)
        slots[(lo, hi)] = entry
    return entry.packed


def _fused_conv(
    conv: nn.Conv2d,
    x: Tensor,
    lo: int = 0,
    hi: int | None = None,
    *,
    unary: str = "none",
    binary: str | None = None,
    other: Tensor | None = None,
) -> Tensor:
    """conv(x) for output channels lo:hi (a depthwise conv's input is then that slice's channels), through oneDNN with
    a packed weight, followed in the same pass by `unary` ("gelu", "swish" = SiLU) or by `binary` ("add", "mul") with
    `other`. Only where `_packable(x)`."""
    hi = conv.out_channels if hi is None else hi
    groups = 1 if conv.groups == 1 else hi - lo  # depthwise: one group per channel of the slice
    weight = _packed_weight(conv, lo, hi, groups, x)
    bias = None if conv.bias is None else conv.bias.detach()[lo:hi]
    args = (list(cast(tuple[int, int], conv.padding)), list(conv.stride), list(conv.dilation), groups)
    if binary is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [], _ALGORITHM.get(unary, ""))
    return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, *args, binary, None, None, [], None)


_ALGORITHM = {"gelu": "none"}  # exact (erf) GELU, as F.gelu


def _conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """conv(x), prepacked where `_packable(x)`."""
    return _fused_conv(conv, x) if _packable(x) else conv(x)


def _mix_matrix(attn: Tensor, project_out: nn.Conv2d) -> Tensor:
    """W_out · blockdiag(attn): (B, C, C), project_out(attn @ v) as one matrix per image (see `_attend_and_project`)."""
    b, heads, d = attn.shape[0], attn.shape[1], attn.shape[2]
    c = heads * d
    weight = project_out.weight.view(c, c)
    if heads == 1:
        return weight @ attn[:, 0]
    block = attn.new_zeros(b, heads, d, heads, d)
    torch.diagonal(block, dim1=1, dim2=3).copy_(attn.permute(0, 2, 3, 1))
    return weight @ block.view(b, c, c)


def _project_plus(attn: Tensor, v: Tensor, project_out: nn.Conv2d, residual: Tensor | None) -> Tensor:
    """[residual +] project_out(attn @ v) for one image in one oneDNN pass: the folded (C x C) matrix as a 1x1 conv,
    with the residual add as its post-op."""
    c = v.shape[1]
    mix = _mix_matrix(attn, project_out).view(c, c, 1, 1)
    bias = None if project_out.bias is None else project_out.bias.detach()
    args = ([0, 0], [1, 1], [1, 1], 1)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(v, mix, bias, *args, "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(v, residual, mix, bias, *args, "add", None, None, [], None)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, C, H, W) -> (B, heads, C/heads, H·W), a view in either memory layout."""
    b, c, h, w = t.shape
    if _channels_last(t):
        return t.permute(0, 2, 3, 1).reshape(b, h * w, heads, c // heads).permute(0, 2, 3, 1)
    return t.reshape(b, heads, c // heads, h * w)


def _l2_norms(t: Tensor, heads: int) -> Tensor:
    """Euclidean norm over H·W of each channel of (B, C, H, W): (B, heads, C/heads, 1)."""
    b, c, h, w = t.shape
    if _channels_last(t):
        # Column sums of squares of the (H·W, C) token matrix. torch's sum reduces the H·W rows in cascades; a
        # ones-vector matmul (or vector_norm along the strided dim) accumulates them in one running sum, 6e-4 off
        # in relative terms at 528x536, which the attention temperature magnified to 1e-4 at the output.
        tokens = t.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return tokens.square().sum(dim=1).sqrt().view(b, heads, c // heads, 1)
    return torch.linalg.vector_norm(t.reshape(b, heads, c // heads, h * w), dim=-1, keepdim=True)


#: channels-last Gram matrices are summed over H·W in chunks of this many pixels (see `_gram`)
GRAM_CHUNK = 4096


def _gram(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """q kᵀ over H·W per head, (B, heads, d, d), for q and k (B, C, H, W).

    On channels-last operands BLAS would contract a strided H·W axis in long running sums: 5e-5 relative error at
    528x536 with 8 channels, against 3e-6 for the contiguous rows of the reference path. Partial products over chunks
    of GRAM_CHUNK pixels, summed by torch's cascaded reduction, stay within 1e-6 at any size.
    """
    b, c, h, w = q.shape
    n = h * w
    if n <= GRAM_CHUNK or not (_channels_last(q) and _channels_last(k)):
        return _split_heads(q, heads) @ _split_heads(k, heads).transpose(-2, -1)
    d = c // heads
    full = n // GRAM_CHUNK * GRAM_CHUNK
    q_tokens = q.permute(0, 2, 3, 1).reshape(b, n, c)
    k_tokens = k.permute(0, 2, 3, 1).reshape(b, n, c)
    per_head = []
    for i in range(heads):
        qh, kh = q_tokens[..., i * d : (i + 1) * d], k_tokens[..., i * d : (i + 1) * d]
        chunks = qh[:, :full].reshape(-1, GRAM_CHUNK, d).transpose(1, 2) @ kh[:, :full].reshape(-1, GRAM_CHUNK, d)
        gram = chunks.view(b, -1, d, d).sum(dim=1)
        if full < n:
            gram = gram + qh[:, full:].transpose(1, 2) @ kh[:, full:]
        per_head.append(gram)
    return torch.stack(per_head, dim=1)


def _channel_attention_map(q: Tensor, k: Tensor, heads: int, temperature: Tensor, fast: bool) -> Tensor:
    """softmax(q̂ k̂ᵀ · temperature) per head, q̂ and k̂ L2-normalised over H·W: (B, heads, C/h, C/h).

    The official code normalises q and k (two full-size copies) before the product. Dividing the small Gram
    matrix by the outer product of the norms gives the same numbers (F.normalize's eps 1e-12 kept) without them.
    """
    if not fast:
        qn = F.normalize(_split_heads(q, heads), dim=-1)
        kn = F.normalize(_split_heads(k, heads), dim=-1)
        return torch.softmax((qn @ kn.transpose(-2, -1)) * temperature, dim=-1)
    gram = _gram(q, k, heads)
    norms = _l2_norms(q, heads).clamp_min(1e-12) * _l2_norms(k, heads).clamp_min(1e-12).transpose(-2, -1)
    return torch.softmax(gram / norms * temperature, dim=-1)


def _attend_and_project(attn: Tensor, v: Tensor, project_out: nn.Conv2d, fast: bool) -> Tensor:
    """project_out(attn @ v) for channel attention maps `attn` (B, heads, d, d) and values `v` (B, C, H, W).

    Both steps are linear in v, so they fold into one (C x C) matrix per image, W_out · blockdiag(attn): one pass
    over v instead of two and no intermediate tensor. The result keeps v's memory layout.
    """
    b, c, h, w = v.shape
    if not fast:
        return project_out((attn @ _split_heads(v, attn.shape[1])).reshape(b, c, h, w))
    mix = _mix_matrix(attn, project_out)
    bias = project_out.bias
    if _channels_last(v):
        tokens = v.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if bias is None:
            out = tokens @ mix.transpose(-2, -1)
        else:
            out = torch.baddbmm(bias.view(1, 1, c), tokens, mix.transpose(-2, -1))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)
    flat = v.reshape(b, c, h * w)
    out = mix @ flat if bias is None else torch.baddbmm(bias.view(1, c, 1), mix, flat)
    return out.view(b, c, h, w)


#: from this many pixels on, blocks run their widest steps in channel slices (same numbers, a fraction of the memory)
LOW_MEMORY_PIXELS = 2**21


def _low_memory(x: Tensor) -> bool:
    return x.shape[-2] * x.shape[-1] >= LOW_MEMORY_PIXELS


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _mul(a: Tensor, b: Tensor) -> Tensor:
    """a * b, in place into `a` when no gradient is being recorded. `a` must be a temporary made by the caller
    (never a submodule's output, which a forward hook may hold)."""
    return a * b if torch.is_grad_enabled() else a.mul_(b)


def _add(a: Tensor, b: Tensor) -> Tensor:
    return a + b if torch.is_grad_enabled() else a.add_(b)


def _pointwise_depthwise(
    x: Tensor, weight: Tensor, bias: Tensor | None, depthwise: nn.Conv2d, lo: int, hi: int
) -> Tensor:
    """depthwise(conv1x1(x; weight, bias)) for output channels lo:hi only. Every channel has its own depthwise
    filter, so a slice gives exactly those channels of the whole."""
    h = F.conv2d(x, weight[lo:hi], None if bias is None else bias[lo:hi])
    dw_bias = None if depthwise.bias is None else depthwise.bias[lo:hi]
    return F.conv2d(h, depthwise.weight[lo:hi], dw_bias, padding=depthwise.padding, groups=hi - lo)


class ChannelAttention(nn.Module):
    """Restormer's MDTA: 1x1 + depthwise 3x3 projections, channel attention, 1x1 output."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, fast: bool, residual: Tensor | None = None) -> Tensor:
        """The attention output, plus `residual` when given (fused into the output projection on the packed path)."""
        c = self.project_out.in_channels
        if fast and x.shape[0] == 1 and _packable(x) and not _low_memory(x):
            # q, k and v each by their own 1x1 and depthwise conv: contiguous operands for the Gram matrix and the
            # folded output conv, where slices of one 3C-channel tensor would be strided or copied
            q, k, v = (
                _fused_conv(self.qkv_dwconv, _fused_conv(self.qkv, x, i * c, (i + 1) * c), i * c, (i + 1) * c)
                for i in range(3)
            )
            attn = _channel_attention_map(q, k, self.num_heads, self.temperature, fast)
            del q, k
            return _project_plus(attn, v, self.project_out, residual)
        if fast and _low_memory(x):
            # q, k and v one at a time: never the 3-channel-group projection and its depthwise output together
            q, k, v = (
                _pointwise_depthwise(x, self.qkv.weight, self.qkv.bias, self.qkv_dwconv, i * c, (i + 1) * c)
                for i in range(3)
            )
        else:
            qkv = self.qkv(x)
            q, k, v = self.qkv_dwconv(qkv).chunk(3, dim=1)
            del qkv  # free the projection before the attention itself
        attn = _channel_attention_map(q, k, self.num_heads, self.temperature, fast)
        out = _attend_and_project(attn, v, self.project_out, fast)
        return out if residual is None else residual + out


class CrossChannelAttention(nn.Module):
    """Channel attention with queries from `x` and keys/values from `y` (depthwise 7x7 on the keys/values)."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, padding=3, groups=dim * 2, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, y: Tensor, fast: bool, residual: Tensor | None = None) -> Tensor:
        """The attention output, plus `residual` when given (fused into the output projection on the packed path)."""
        if fast and x.shape[0] == 1 and _packable(x) and _packable(y) and not _low_memory(y):
            c = self.q.out_channels
            q = _fused_conv(self.q_dwconv, _fused_conv(self.q, x))
            k, v = (
                _fused_conv(self.kv_dwconv, _fused_conv(self.kv, y, i * c, (i + 1) * c), i * c, (i + 1) * c)
                for i in (0, 1)
            )
            attn = _channel_attention_map(q, k, self.num_heads, self.temperature, fast)
            del q, k
            return _project_plus(attn, v, self.project_out, residual)
        q = self.q_dwconv(self.q(x))
        if fast and _low_memory(y):
            c = self.q.out_channels
            k, v = (
                _pointwise_depthwise(y, self.kv.weight, self.kv.bias, self.kv_dwconv, i * c, (i + 1) * c)
                for i in (0, 1)
            )
        else:
            k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)
        attn = _channel_attention_map(q, k, self.num_heads, self.temperature, fast)
        out = _attend_and_project(attn, v, self.project_out, fast)
        return out if residual is None else residual + out


class GatedFFN(nn.Module):
    """Restormer's GDFN: 1x1 up to 2 hidden, depthwise 3x3, GELU(x1) * x2, 1x1 down."""

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor, fast: bool, residual: Tensor | None = None) -> Tensor:
        """The FFN output, plus `residual` when given (fused into the output projection on the packed path)."""
        n = self.project_out.in_channels
        if fast and _packable(x) and not _low_memory(x):
            # GELU inside the first half's depthwise conv, the gate inside the second's, the residual inside the output
            # projection: three elementwise passes over the widest tensors fewer
            gelu = _fused_conv(self.dwconv, _fused_conv(self.project_in, x, 0, n), 0, n, unary="gelu")
            hidden = _fused_conv(self.project_in, x, n, 2 * n)
            gated = _fused_conv(self.dwconv, hidden, n, 2 * n, binary="mul", other=gelu)
            del gelu, hidden
            if residual is None:
                return _fused_conv(self.project_out, gated)
            return _fused_conv(self.project_out, gated, binary="add", other=residual)
        out = self._unfused(x, fast)
        return out if residual is None else residual + out

    def _unfused(self, x: Tensor, fast: bool) -> Tensor:
        if not fast:
            x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
            return self.project_out(F.gelu(x1) * x2)
        n = self.project_out.in_channels
        if not _low_memory(x):
            # The two halves of the hidden layer one after the other: every channel gets the same convolutions, but
            # the widest tensors of the block (2 x hidden channels, twice) never exist at once.
            gated = _mul(F.gelu(self._hidden(x, 0, n)), self._hidden(x, n, 2 * n))
            return self.project_out(gated)
        # Large images: a quarter of the hidden channels at a time, each quarter's share of the output projection
        # summed up, so that no hidden-width tensor exists at all.
        out = None
        weight = self.project_out.weight
        for lo, hi in _ranges(n, 4):
            gated = _mul(F.gelu(self._hidden(x, lo, hi)), self._hidden(x, n + lo, n + hi))
            part = F.conv2d(gated, weight[:, lo:hi])
            del gated
            out = part if out is None else _add(out, part)
        assert out is not None  # _ranges gives at least one slice
        bias = self.project_out.bias
        return out if bias is None else _add(out, bias.view(1, -1, 1, 1).to(out.dtype))

    def _hidden(self, x: Tensor, lo: int, hi: int) -> Tensor:
        """Hidden channels lo:hi (of 2 x hidden): the 1x1 projection and the depthwise conv of those channels only."""
        return _pointwise_depthwise(x, self.project_in.weight, self.project_in.bias, self.dwconv, lo, hi)


class TransformerBlock(nn.Module):
    """Pre-norm block of the encoder, latent and refinement stages (the official `EncoderBlock`)."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm_bias: bool) -> None:
        super().__init__()
        self.norms = nn.ModuleList([ChannelLayerNorm(dim, norm_bias), ChannelLayerNorm(dim, norm_bias)])
        self.mixer = ChannelAttention(dim, heads, bias)
        self.ffn = GatedFFN(dim, expansion, bias)

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        if not fast:
            x = x + self.mixer(self.norms[0](x, fast), fast)
            return x + self.ffn(self.norms[1](x, fast), fast)
        # the residual adds go inside the last conv of each branch where it is packed
        x = self.mixer(self.norms[0](x, fast), fast, residual=x)
        return self.ffn(self.norms[1](x, fast), fast, residual=x)


class TransformerGroup(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int, expansion: float, norm_bias: bool) -> None:
        super().__init__()
        # The official encoder-style groups always use biased convs, whatever the model's `bias` flag.
        self.layers = nn.ModuleList(TransformerBlock(dim, heads, expansion, True, norm_bias) for _ in range(blocks))

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        for layer in self.layers:
            x = layer(x, fast)
        return x


class FFTAttention(nn.Module):
    """The experts' token mixer: q and k are multiplied in the Fourier domain inside non-overlapping p x p windows
    (a circular correlation per window), normalised, and used to gate v."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, padding=3, groups=dim * 2)
        self.norm = ChannelLayerNorm(dim, True)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def _windows(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/p, W/p, p, p), zero-padding bottom/right to a multiple of p; a view when no
        padding is needed."""
        p = self.patch_size
        b, c, h, w = x.shape
        if h % p or w % p:
            x = F.pad(x, (0, -w % p, 0, -h % p))
        hp, wp = x.shape[-2] // p, x.shape[-1] // p
        if _channels_last(x):
            return x.permute(0, 2, 3, 1).reshape(b, hp, p, wp, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.view(b, c, hp, p, wp, p).permute(0, 1, 2, 4, 3, 5)

    def forward(self, x: Tensor, fast: bool) -> Tensor:
        r = self.q.out_channels
        b, _, h, w = x.shape
        if fast and _low_memory(x):
            # Large images: q and k a quarter of the channels at a time, straight into the correlation, then v; at full
            # resolution the complex spectra are the widest tensors of the network.
            chunks = (
                (
                    lo,
                    hi,
                    _pointwise_depthwise(x, self.q.weight, None, self.q_dwconv, lo, hi),
                    _pointwise_depthwise(x, self.kv.weight, None, self.kv_dwconv, lo, hi),
                )
                for lo, hi in _ranges(r, 4)
            )
            out = self._correlate(chunks, b, r, h, w, x, fast)
            v = _pointwise_depthwise(x, self.kv.weight, None, self.kv_dwconv, r, 2 * r)
            # normalise and gate a band of rows at a time: no second float32 copy of the correlation
            gated = torch.empty_like(v)
            for top, bottom in _ranges(h, 8):
                gated[:, :, top:bottom] = self.norm(out[:, :, top:bottom], fast).to(v.dtype) * v[:, :, top:bottom]
            del out, v
            return self.proj_out(gated)
        if fast and _packable(x):
            q = _fused_conv(self.q_dwconv, _fused_conv(self.q, x))
            k = _fused_conv(self.kv_dwconv, _fused_conv(self.kv, x, 0, r), 0, r)
            out = self._correlate(iter([(0, r, q, k)]), b, r, h, w, x, fast)
            del q, k
            normed = self.norm(out, fast).to(x.dtype)  # the correlation is float32 (see `_correlate`)
            del out
            # the gate by v inside v's depthwise conv
            gated = _fused_conv(self.kv_dwconv, _fused_conv(self.kv, x, r, 2 * r), r, 2 * r, binary="mul", other=normed)
            del normed
            return _fused_conv(self.proj_out, gated)
        q, kv = self.q(x), self.kv(x)
        q = self.q_dwconv(q)
        k, v = self.kv_dwconv(kv).chunk(2, dim=1)
        del kv  # the projection (freed once the depthwise conv has read it)
        out = self._correlate(iter([(0, r, q, k)]), b, r, h, w, x, fast)
        del q, k
        return self.proj_out(self.norm(out, fast).to(v.dtype) * v)

    def _correlate(
        self,
        chunks: Iterator[tuple[int, int, Tensor, Tensor]],
        b: int,
        c: int,
        h: int,
        w: int,
        like: Tensor,
        fast: bool,
    ) -> Tensor:
        """The per-window circular correlation of q and k, given as channel chunks (lo, hi, q[:, lo:hi], k[:, lo:hi]):
        (B, C, H, W) float32 in the layout of `like` (the official code runs these FFTs in float32 whatever the
        working precision)."""
        p = self.patch_size
        if not fast:
            _, _, q, k = next(chunks)
            qw, kw = self._windows(q), self._windows(k)
            hp, wp = qw.shape[2], qw.shape[3]
            out = torch.fft.irfft2(torch.fft.rfft2(qw.float()) * torch.fft.rfft2(kw.float()), s=(p, p))
            return out.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hp * p, wp * p)[:, :, :h, :w]
        # written straight into the output layout, without a reshaped copy
        layout = torch.channels_last if _channels_last(like) else torch.contiguous_format
        out = torch.empty(b, c, h + -h % p, w + -w % p, dtype=torch.float32, device=like.device, memory_format=layout)
        out_windows = self._windows(out)
        for lo, hi, q, k in chunks:
            qw, kw = self._windows(q), self._windows(k)
            del q, k
            # A band of window rows at a time, so that each band's window copies and FFTs stay in cache: on a whole
            # 1024² map the strided gathers into and out of the FFTs missed it (32 channels, 32-px windows: 1.32 s
            # against 0.59 s in bands, the same numbers; 3% of a MoCE-IR-S pass at 1024², 1.6% at 256²).
            row_bytes = qw.shape[0] * qw.shape[1] * qw.shape[3] * p * p * 4
            rows = max(1, FFT_BAND_BYTES // row_bytes)
            for top in range(0, qw.shape[2], rows):
                band = slice(top, top + rows)
                # contiguous windows: the FFT's shape function under torch.compile rejects the strided window view
                spectrum = torch.fft.rfft2(qw[:, :, band].float().contiguous())
                spectrum = _mul(spectrum, torch.fft.rfft2(kw[:, :, band].float().contiguous()))
                out_windows[:, lo:hi, band] = torch.fft.irfft2(spectrum, s=(p, p))
                del spectrum
        return out[:, :, :h, :w]


class ComplexityExpert(nn.Module):
    """One expert: down-project to its rank, FFT attention gated by SiLU of the shared features, up-project, residual.
    (The official `ModExpert`.)"""

    def __init__(self, dim: int, rank: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            [
                nn.Conv2d(dim, rank, 1, bias=False),
                nn.Conv2d(dim, rank, 1, bias=False),
                nn.Conv2d(rank, dim, 1, bias=False),
            ]
        )
        self.body = FFTAttention(rank, patch_size)

    def forward(self, x: Tensor, shared: Tensor, fast: bool) -> Tensor:
        if not fast:
            h = self.body(self.proj[0](x), fast) * F.silu(self.proj[1](shared))
            return self.proj[2](h) + x
        # (in place only into tensors made here: submodule outputs may be held by hooks)
        if _packable(x) and _packable(shared):
            down, gate, up = (cast(nn.Conv2d, conv) for conv in self.proj)
            body = self.body(_fused_conv(down, x), fast)
            h = _fused_conv(gate, shared, unary="swish").mul_(body)  # SiLU inside the conv
            del body
            return _fused_conv(up, h, binary="add", other=x)
        body = self.body(self.proj[0](x), fast)
        h = _mul(F.silu(self.proj[1](shared)), body)
        del body
        return self.proj[2](h) + x


class Router(nn.Module):
    """Image-level router: logits = Linear(avgpool(x)) + Linear(frequency embedding). (The official `RoutingFunction`.)

    The `complexity` buffer holds each expert's parameter count, normalised; it weights the importance loss when the
    complexity bias is on.
    """

    complexity: Tensor

    def __init__(self, dim: int, freq_dim: int, num_experts: int, complexity: Tensor) -> None:
        super().__init__()
        # Sequential indices match the official keys (`gate.2.weight`); index 1 was an einops Rearrange.
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(dim, num_experts, bias=False))
        self.freq_gate = nn.Linear(freq_dim, num_experts, bias=False)
        self.register_buffer("complexity", complexity)
        self.noise_std = 1.0 / num_experts

    def forward(self, x: Tensor, freq_emb: Tensor) -> Tensor:
        """Clean logits (B, E)."""
        return self.gate(x) + self.freq_gate(freq_emb)

    def aux_loss(self, logits: Tensor, noisy_logits: Tensor, k: int, complexity_bias: bool) -> Tensor:
        """0.5 * importance + 0.5 * load balance loss, exactly as the official code computes them.

        Both are squared coefficients of variation over the experts (unbiased std). Importance sums the clean softmax
        over the batch, times the normalised complexity when the bias is on. Load is the probability, under the
        routing noise, that each expert's clean logit beats the k-th best noisy logit, averaged over the batch.
        """
        importance = logits.softmax(dim=-1).sum(dim=0)
        if complexity_bias:
            importance = importance * self.complexity
        loss_imp = (importance.std() / (importance.mean() + 1e-8)) ** 2

        kth = torch.topk(noisy_logits, k, dim=-1).values[:, -1:]
        z = (kth - logits) / self.noise_std
        p = 1.0 - 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
        load = p.mean(dim=0)
        loss_load = (load.std() / (load.mean() + 1e-8)) ** 2
        return 0.5 * loss_imp + 0.5 * loss_load


class MoCELayer(nn.Module):
    """Router plus complexity experts; the gated output of the chosen experts, then a 1x1 projection.
    (The official `AdapterLayer`.)"""

    def __init__(self, dim: int, cfg: MoCEIRConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.complexity_bias = cfg.with_complexity
        ranks = cfg.expert_ranks(dim)
        # Each expert sits alone in a container so its keys read `experts.{e}.0.*` as in the official checkpoints.
        self.experts = nn.ModuleList(
            nn.ModuleList([ComplexityExpert(dim, r, 2 ** (e + 2))]) for e, r in enumerate(ranks)
        )
        self.proj_out = nn.Conv2d(dim, dim, 1, bias=False)
        # on the CPU even when the network is built on the meta device (loading checks a config's shapes so): a meta
        # tensor's division runs torch's Python reference ops, whose first use imports torch._dynamo (1.3 s)
        complexity = torch.tensor([float(sum(p.numel() for p in ex.parameters())) for ex in self.experts], device="cpu")
        if cfg.complexity_scale == "max":
            complexity = complexity / complexity.max()
        elif cfg.complexity_scale == "min":
            complexity = complexity / complexity.min()
        self.routing = Router(dim, cfg.freq_dim, cfg.num_experts, complexity)

    def expert(self, e: int) -> ComplexityExpert:
        return cast(ComplexityExpert, cast(nn.ModuleList, self.experts[e])[0])

    def _decide(self, x: Tensor, freq_emb: Tensor, state: _Pass) -> tuple[Tensor, Tensor, Tensor | None]:
        """Top-k experts (B, k) and gates (B, k) for this layer, recorded in `state`, and a CPU copy of the experts
        when one exists without a device sync (imposed routing)."""
        if state.imposed is not None:
            experts = state.imposed.experts[:, state.layer]
            gates = state.imposed.gates[:, state.layer]
            host = state.imposed.host_experts
            state.experts.append(experts)
            state.gates.append(gates)
            return experts, gates, None if host is None else host[:, state.layer]
        logits = self.routing(x, freq_emb)
        scores = logits
        if self.training or state.noise is not False:
            # Official behaviour: Gaussian noise of std 1/E on the logits (always in training; opt-in at inference).
            gen = state.noise if isinstance(state.noise, torch.Generator) else None
            noise = torch.randn(logits.shape, generator=gen, device=logits.device if gen is None else gen.device)
            scores = logits + noise.to(logits.device, logits.dtype) * self.routing.noise_std
        gates, experts = torch.topk(scores.softmax(dim=-1), self.top_k, dim=-1)
        if self.training:
            state.aux.append(self.routing.aux_loss(logits, scores, self.top_k, self.complexity_bias))
        state.experts.append(experts)
        state.gates.append(gates)
        state.logits.append(logits)
        return experts, gates, None

    def forward(self, x: Tensor, freq_emb: Tensor, shared: Tensor, state: _Pass) -> Tensor:
        experts, gates, host = self._decide(x, freq_emb, state)
        gates = gates.to(x.dtype)
        state.layer += 1
        if state.dense:
            # Every expert on every image; unchosen experts get gate 0, so the sum equals the sparse result.
            full = torch.zeros(x.shape[0], len(self.experts), dtype=x.dtype, device=x.device)
            full.scatter_(1, experts, gates)
            out = sum(
                full[:, e].view(-1, 1, 1, 1) * self.expert(e)(x, shared, state.fast) for e in range(len(self.experts))
            )
            return self.proj_out(out)
        if host is None:
            host = experts.cpu()  # which experts to run is decided on the host: one sync per layer on accelerators
        if bool((host == host[:1]).all()):
            # The whole batch (always so at batch 1) runs the same experts: no regrouping, only per-image gates.
            out = None
            for slot, e in enumerate(host[0].tolist()):
                y = gates[:, slot].view(-1, 1, 1, 1) * self.expert(e)(x, shared, state.fast)
                out = y if out is None else out + y
            return self.proj_out(out)
        # Group the batch by expert: each image runs only its own experts and receives only their outputs.
        out = torch.zeros_like(x)
        for e in torch.unique(host).tolist():
            rows, slot = (host == e).nonzero(as_tuple=True)
            rows, slot = rows.to(x.device), slot.to(x.device)
            y = self.expert(e)(x[rows], shared[rows], state.fast) * gates[rows, slot].view(-1, 1, 1, 1)
            out = out.index_add(0, rows, y)
        return self.proj_out(out)


class MoCEBlock(nn.Module):
    """Decoder block: shared channel attention and a MoCE layer on two projections of the normalised input, merged
    by cross-attention (queries from the experts), then the gated FFN. (The official `DecoderBlock`.)"""

    def __init__(self, dim: int, heads: int, cfg: MoCEIRConfig) -> None:
        super().__init__()
        norm_bias = cfg.layernorm_type == "WithBias"
        self.norms = nn.ModuleList([ChannelLayerNorm(dim, norm_bias), ChannelLayerNorm(dim, norm_bias)])
        self.proj = nn.ModuleList([nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)])
        self.shared = ChannelAttention(dim, heads, cfg.bias)
        self.mixer = CrossChannelAttention(dim, heads, cfg.bias)
        self.ffn = GatedFFN(dim, cfg.ffn_expansion_factor, cfg.bias)
        self.adapter = MoCELayer(dim, cfg)

    def forward(self, x: Tensor, freq_emb: Tensor, state: _Pass) -> Tensor:
        fast = state.fast
        h = self.norms[0](x, fast)
        to_shared, to_experts = (cast(nn.Conv2d, conv) for conv in self.proj)
        shared = self.shared(_conv(to_shared, h) if fast else to_shared(h), fast)
        h = _conv(to_experts, h) if fast else to_experts(h)  # rebinding frees the normalised input before the experts
        routed = self.adapter(h, freq_emb, shared, state)
        del h
        if not fast:
            x = x + self.mixer(routed, shared, fast)
            del routed, shared
            return x + self.ffn(self.norms[1](x, fast), fast)
        x = self.mixer(routed, shared, fast, residual=x)
        del routed, shared  # not needed by the feed-forward part, the widest of the block
        return self.ffn(self.norms[1](x, fast), fast, residual=x)


class MoCEGroup(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int, cfg: MoCEIRConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MoCEBlock(dim, heads, cfg) for _ in range(blocks))

    def forward(self, x: Tensor, freq_emb: Tensor, state: _Pass) -> Tensor:
        for layer in self.layers:
            x = layer(x, freq_emb, state)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return _conv(self.proj, x)


class Downsample(nn.Module):
    """C -> 2C channels at half resolution: 3x3 conv to C/2, then PixelUnshuffle(2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body[1](_conv(cast(nn.Conv2d, self.body[0]), x))


class Upsample(nn.Module):
    """C -> C/2 channels at double resolution: 3x3 conv to 2C, then PixelShuffle(2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body[1](_conv(cast(nn.Conv2d, self.body[0]), x))


class HighPass(nn.Module):
    """Depthwise 3x3 conv initialised to a Laplacian. The official `freeze` never took effect, so the trained kernel
    is whatever the checkpoint holds."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        laplacian = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
        with torch.no_grad():
            self.conv.weight.copy_(laplacian.expand(dim, 1, 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FrequencyEmbedding(nn.Module):
    """The global "degradation prompt" every router sees: high-pass of the latent features, GELU, spatial mean, MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.high_conv = nn.Sequential(HighPass(dim), nn.GELU())
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.high_conv(x).mean(dim=(-2, -1)))


# --------------------------------------------------------------------------------------------------------------------
# The network


class MoCEIR(nn.Module):
    """MoCE-IR. `forward(x)` restores a (B, C, H, W) batch in [0, 1] of any H x W (output not clamped); `run` (sides
    multiples of `size_multiple`) also returns the routing and, in training mode, the auxiliary routing loss."""

    arch = ARCH

    def __init__(self, config: MoCEIRConfig | None = None) -> None:
        super().__init__()
        cfg = config or MoCEIRConfig()
        self.config = cfg
        dims = [cfg.dim * 2**i for i in range(cfg.levels)]
        norm_bias = cfg.layernorm_type == "WithBias"
        f = cfg.ffn_expansion_factor

        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.dim)
        self.freq_embed = FrequencyEmbedding(cfg.freq_dim)
        self.enc = nn.ModuleList(
            nn.ModuleList(
                [TransformerGroup(dims[i], cfg.heads[i], cfg.num_blocks[i], f, norm_bias), Downsample(dims[i])]
            )
            for i in range(cfg.levels - 1)
        )
        self.latent = TransformerGroup(dims[-1], cfg.heads[-1], cfg.num_blocks[-1], f, norm_bias)
        # Decoder i runs at the resolution of encoder level (levels-2-i), lowest resolution first.
        self.dec = nn.ModuleList()
        for i in range(cfg.levels - 1):
            level = cfg.levels - 2 - i
            self.dec.append(
                nn.ModuleList(
                    [
                        Upsample(dims[level + 1]),
                        nn.Conv2d(dims[level + 1], dims[level], 1, bias=cfg.bias),
                        MoCEGroup(dims[level], cfg.heads[level], cfg.num_dec_blocks[level], cfg),
                    ]
                )
            )
        self.refinement = TransformerGroup(cfg.dim, cfg.heads[0], cfg.num_refinement_blocks, f, norm_bias)
        self.output = nn.Conv2d(cfg.dim, cfg.out_channels, 3, padding=1, bias=cfg.bias)
        #: memory layout of the activations inside `run`
        self.memory_format = torch.channels_last

    # -- introspection used by the engine, reports and tests (through `SPEC`)

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def moce_layers(self) -> list[MoCELayer]:
        """The MoCE layers in forward order (lowest-resolution decoder first)."""
        return [cast(MoCEBlock, block).adapter for _, _, group in self._decoder() for block in group.layers]

    @property
    def moce_layer_names(self) -> list[str]:
        return [
            f"dec.{i}.2.layers.{j}.adapter"
            for i, (_, _, group) in enumerate(self._decoder())
            for j in range(len(group.layers))
        ]

    def _encoder(self) -> list[tuple[TransformerGroup, Downsample]]:
        """The encoder levels, full resolution first (ModuleLists keep the official keys `enc.{i}.{0,1}`)."""
        return [(cast(TransformerGroup, level[0]), cast(Downsample, level[1])) for level in self._levels(self.enc)]

    def _decoder(self) -> list[tuple[Upsample, nn.Conv2d, MoCEGroup]]:
        """The decoder levels, lowest resolution first (`dec.{i}.{0,1,2}`)."""
        return [
            (cast(Upsample, level[0]), cast(nn.Conv2d, level[1]), cast(MoCEGroup, level[2]))
            for level in self._levels(self.dec)
        ]

    @staticmethod
    def _levels(stages: nn.ModuleList) -> list[nn.ModuleList]:
        return [cast(nn.ModuleList, level) for level in stages]

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    # -- hooks for `irtool bench` (`SPEC.capabilities` names them)

    def uniform_routing(self, batch: int, expert: int) -> Routing:
        """A routing that sends every image to `expert` in every MoCE layer with gate 1, to measure one expert's cost."""
        if not 0 <= expert < self.config.num_experts:
            raise ValueError(f"expert {expert}: this MoCE-IR has experts 0..{self.config.num_experts - 1}")
        shape = (batch, len(self.moce_layers), 1)
        return Routing(torch.full(shape, expert, dtype=torch.long), torch.ones(shape))

    def profile_parts(self) -> dict[str, list[nn.Module]]:
        """The modules behind each part of a time breakdown; the rest is the trunk. The router is the frequency
        embedding plus every layer's gate; the experts are what sparse execution skips."""
        layers = self.moce_layers
        return {
            "router": [self.freq_embed, *(layer.routing for layer in layers)],
            "experts": [layer.expert(e) for layer in layers for e in range(len(layer.experts))],
        }

    # -- forward

    def run(
        self,
        x: Tensor,
        routing: Routing | None = None,
        *,
        dense: bool = False,
        routing_noise: bool | torch.Generator = False,
        reference: bool = False,
    ) -> MoCEResult:
        """Restore `x` (B, C, H, W); H and W must be multiples of `size_multiple` (the aligned path; `model(x)`
        takes any size).

        routing: impose these experts and gates instead of routing (e.g. the routing of a whole image, for its tiles).
        dense: run every expert on every image (gates 0 for the unchosen ones); same result, for benchmarks.
        routing_noise: add the official N(0, (1/E)^2) noise to the router logits at inference too. True draws from
            torch's global RNG, as the official test does after `torch.manual_seed(0)`; a Generator draws from it.
            (Training always adds the noise, as the official training does.)
        reference: the plain formulation of the official code (NCHW activations, LayerNorm from `var_mean`,
            attention with explicitly normalised q and k, `attn @ v` then the output conv, whole-width
            intermediates), the yardstick the fast paths are tested and benchmarked against.
        """
        if routing is not None and routing.experts.shape[0] != x.shape[0]:
            raise ValueError(f"routing is for {routing.experts.shape[0]} images but the batch has {x.shape[0]}")
        require_multiple(x, self.config.size_multiple, "MoCE-IR")
        fast = not reference
        state = _Pass(
            imposed=None if routing is None else routing.to(x.device), noise=routing_noise, dense=dense, fast=fast
        )
        x = x.contiguous(memory_format=self.memory_format if fast else torch.contiguous_format)
        if fast and _cpu_bf16_autocast(x):
            # The network's bf16 copy, autocast off: bf16 weights and activations, packed convs (LayerNorm, softmax
            # and the experts' FFTs compute in float32 inside, as under autocast). The last conv and the image
            # residual run in float32 here, as autocast's fp32 residual add does: an image and its restoration
            # rounded to bf16 would lose up to a quarter of an 8-bit level.
            with torch.autocast("cpu", enabled=False):
                feats = self._bf16_copy()._features(x.to(torch.bfloat16), state).float()
                out = self._restored(feats, x)
        else:
            out = self._restored(self._features(x, state), x)

        decided = Routing(
            experts=torch.stack(state.experts, dim=1),
            gates=torch.stack(state.gates, dim=1),
            logits=torch.stack(state.logits, dim=1) if state.logits else None,
        )
        aux = torch.stack(state.aux).mean() if state.aux else None
        return MoCEResult(out, decided, aux)

    def _features(self, x: Tensor, state: _Pass) -> Tensor:
        """The refinement stage's features of `x` (the last conv and the image residual are `run`'s)."""
        fast = state.fast
        feats = self.patch_embed(x)
        skips = []
        for group, down in self._encoder():
            feats = group(feats, fast)
            skips.append(feats)
            feats = down(feats)
        feats = self.latent(feats, fast)
        freq_emb = self.freq_embed(feats)
        for up, fuse, moce_group in self._decoder():
            feats = _conv(fuse, torch.cat([up(feats), skips.pop()], dim=1))
            feats = moce_group(feats, freq_emb, state)
        return self.refinement(feats, fast)

    def _restored(self, feats: Tensor, x: Tensor) -> Tensor:
        """The last conv plus the image residual (NCHW-contiguous for callers, whatever the working layout)."""
        if _packable(feats):
            return _fused_conv(self.output, feats, binary="add", other=x).contiguous()
        return (self.output(feats) + x).contiguous()

    def _bf16_copy(self) -> MoCEIR:
        """This network in bf16 (made once, again after its weights change), in the same train/eval mode."""
        entry = _BF16_COPIES.get(self)
        if entry is None or not entry.fresh(self):
            tensors = [*self.parameters(), *self.buffers()]
            sources = [(t, t.untyped_storage(), t._version) for t in tensors]
            # made outside inference mode even when called inside it: its weights are packed and version-checked
            with torch.inference_mode(False), torch.no_grad():
                entry = _Bf16Copy(sources, copy.deepcopy(self).to(torch.bfloat16))
            _BF16_COPIES[self] = entry
        return entry.network.train(self.training)

    def forward(self, x: Tensor, routing: Routing | None = None, *, dense: bool = False) -> Tensor:
        """The restored batch for any H x W: reflect-padded to `size_multiple`, run, cropped back."""
        return run_padded(self, x, routing=routing, dense=dense).output

    def route(self, x: Tensor) -> Routing:
        """The routing the network picks for `x` (B, C, H, W), sides multiples of `size_multiple`. MoCE-IR's routers
        read decoder features, so this is a full forward pass; route a downscaled copy to decide for a large image
        cheaply."""
        return self.run(x).routing


# --------------------------------------------------------------------------------------------------------------------
# Detection: which state dicts are MoCE-IR, and their config, from keys and shapes alone

_SIGNATURE = (
    "patch_embed.proj.weight",
    "freq_embed.mlp.0.weight",
    "latent.layers.0.mixer.temperature",
    "dec.0.2.layers.0.adapter.routing.freq_gate.weight",
)


def detect(sd: Mapping[str, Tensor]) -> bool:
    """True when the (canonical) state dict has MoCE-IR's signature keys."""
    return all(k in sd for k in _SIGNATURE)


#: what the tensors cannot show: how many experts each token takes (a top-2 router has the same weights)
UNSEEN_FIELDS = ("top_k",)


def infer_config(sd: Mapping[str, Tensor]) -> MoCEIRConfig:
    """Read the full config off the tensors (raises KeyError/ValueError on a malformed state dict)."""
    dim, in_channels = sd["patch_embed.proj.weight"].shape[:2]
    out_channels = sd["output.weight"].shape[0]
    levels = count_children(sd, "enc") + 1
    enc_blocks = [count_children(sd, f"enc.{i}.0.layers") for i in range(levels - 1)]
    latent_blocks = count_children(sd, "latent.layers")
    heads = [sd[f"enc.{i}.0.layers.0.mixer.temperature"].shape[0] for i in range(levels - 1)]
    heads.append(sd["latent.layers.0.mixer.temperature"].shape[0])
    # dec.i is built at level (levels-2-i); num_dec_blocks is listed full resolution first
    dec_blocks = [count_children(sd, f"dec.{levels - 2 - lvl}.2.layers") for lvl in range(levels - 1)]
    expansion = _infer_expansion(sd, int(dim), levels)

    first = "dec.0.2.layers.0"
    num_experts = count_children(sd, f"{first}.adapter.experts")
    channels = sd[f"{first}.proj.0.weight"].shape[0]
    ranks = [sd[f"{first}.adapter.experts.{e}.0.proj.0.weight"].shape[0] for e in range(num_experts)]
    rank_type, rank = _match_rank_rule(ranks, channels, num_experts)

    # The normalisation shows in the buffer's values (when there are values: not for shape-only meta tensors).
    complexity = sd[f"{first}.adapter.routing.complexity"]
    complexity_scale = "max"
    if complexity.device.type != "meta":
        if math.isclose(float(complexity.min()), 1.0, rel_tol=1e-6) and float(complexity.max()) > 1.0:
            complexity_scale = "min"
        elif not math.isclose(float(complexity.max()), 1.0, rel_tol=1e-6):
            complexity_scale = "none"

    return MoCEIRConfig(
        dim=int(dim),
        num_blocks=(*enc_blocks, latent_blocks),
        num_dec_blocks=tuple(dec_blocks),
        num_refinement_blocks=count_children(sd, "refinement.layers"),
        heads=tuple(int(h) for h in heads),
        ffn_expansion_factor=expansion,
        num_experts=num_experts,
        rank_type=rank_type,
        rank=rank,
        complexity_scale=complexity_scale,
        bias=f"{first}.shared.qkv.bias" in sd,
        layernorm_type="WithBias" if "latent.layers.0.norms.0.body.bias" in sd else "BiasFree",
        in_channels=int(in_channels),
        out_channels=int(out_channels),
    )


def _infer_expansion(sd: Mapping[str, Tensor], dim: int, levels: int) -> float:
    """The FFN factor f with int(C * f) equal to every level's hidden width (2.66 stays 2.66, not 127/48)."""
    widths = {
        dim * 2**i: sd[key].shape[0] // 2
        for i, key in enumerate(
            [f"enc.{i}.0.layers.0.ffn.project_in.weight" for i in range(levels - 1)]
            + ["latent.layers.0.ffn.project_in.weight"]
        )
        if key in sd
    }
    # the widest level pins f down most precisely; prefer short decimals (2.0, 2.66) over exact fractions
    for c, hidden in sorted(widths.items(), reverse=True):
        for f in (round(hidden / c, 1), round(hidden / c, 2), round(hidden / c, 3), (hidden + 0.5) / c):
            if all(int(cc * f) == hh for cc, hh in widths.items()):
                return f
    raise ValueError(f"FFN widths {sorted(widths.values())} fit no single expansion factor")


def _match_rank_rule(ranks: list[int], channels: int, num_experts: int) -> tuple[str, int]:
    for rule in RANK_RULES:
        for base in [2] if rule == "spread" else range(1, max(ranks) + 1):
            probe = MoCEIRConfig(num_experts=num_experts, rank_type=rule, rank=base)
            if probe.expert_ranks(channels) == ranks:
                return rule, base
    raise ValueError(f"expert ranks {ranks} follow none of the rank rules ({', '.join(RANK_RULES)})")


# --------------------------------------------------------------------------------------------------------------------
# What the rest of irtool reads about MoCE-IR


SPEC = ArchSpec(
    name=ARCH,
    title="MoCE-IR",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=MoCEIRConfig.from_dict,
    build=MoCEIR,
    variants=VARIANTS,
    unseen_fields=UNSEEN_FIELDS,
    capabilities=Capabilities(
        size_multiple=lambda model: model.config.size_multiple,
        padding="reflect",
        routing=RoutingReport(
            per_layer=True,
            separate=False,
            layer_names=lambda model: model.moce_layer_names,
            num_experts=lambda model: model.config.num_experts,
        ),
        dense=True,
        imposed_routing=True,
        uniform_routing=lambda model, batch, expert: model.uniform_routing(batch, expert),
        routing_noise=True,
        # the routers and the channel attention see the whole image: its tiles share the whole image's routing
        tiling=Tiling(supported=True, shared_routing=True),
        reference_path=True,
        profile_parts=lambda model: model.profile_parts(),
    ),
)
