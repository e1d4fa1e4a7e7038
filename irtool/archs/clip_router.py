"""LoRA-IR's degradation-guided router (DG-Router): a CLIP ViT image tower and a small head that turns five views
of an image into a degradation prior (fed to every DAM gate of the restoration network) and class logits (which
also pick the LoRA expert).

The CLIP tower is implemented here, so neither `transformers` nor a download is needed: the network is built from a
config and loaded from the released `setting1_router.pth`, which holds the whole tower (OpenAI ViT-L/14-336) in bf16.
Module attribute names reproduce the official state-dict keys (`clip_model.vision_tower.vision_model.*` as
transformers 4.37.2 names them, `de_extractor.*`, `cls_head.*`; official `classification/model.py` and
`clip_encoder.py`), so the checkpoint loads with `strict=True` and no renaming table. Older transformers versions
also saved a `position_ids` buffer; this module has none and the loader drops it (`OBSOLETE_KEYS`).

Precision. The official test runs the router with bf16 weights under CUDA autocast (`test_3input.py`). This module
reproduces that policy explicitly, whatever the device: matrix products (the linears, the patch conv, attention) run
in the weights' dtype, while layer norms and the residual stream stay in float32, and the tower's output is cast
back to float32 before the head (as the official `CLIPTower` does). With float32 weights every step is float32.

Preprocessing (`router_views`) reproduces the official `process_highres_image` + `CLIPImageProcessor` bit for bit
for 8-bit images: one view of the whole image resized to 336², and a 2x2 grid of 336² tiles of the image resized to
672², all with PIL's bicubic filter, then scaled by 1/255 and normalised with CLIP's mean and std. It is the one
place under `archs/` that uses PIL (and numpy, to hand PIL its pixels): PIL's resampling *is* the official
definition of the views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._keys import config_fields
from .spec import ArchSpec, Capabilities, Tiling

ARCH = "clip_router"

#: Class names of the released Setting I router (official `Setting1/README.md`, labels of `train_setting1.py`).
SETTING1_CLASSES = ("snow", "rain", "raindrop")

#: CLIP's normalisation (openai/clip-vit-large-patch14-336 `preprocessor_config.json`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_TOWER = "clip_model.vision_tower"
#: Keys some checkpoints carry that hold nothing to load (a non-persistent buffer that older transformers saved).
OBSOLETE_KEYS = (f"{_TOWER}.vision_model.embeddings.position_ids",)

ACTIVATIONS = ("quick_gelu", "gelu")


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class CLIPRouterConfig:
    """Hyperparameters of the DG-Router. The defaults are the released Setting I router (CLIP ViT-L/14 at 336 px)."""

    hidden_size: int = 1024
    num_layers: int = 24
    #: attention heads; not visible in the weights, so detection takes it from a matching variant, else assumes
    #: CLIP's 64 channels per head and warns (state it: `load_model(..., router_config={"num_heads": N})`)
    num_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 336
    patch_size: int = 14
    #: width of CLIP's `image_embeds`; the head maps 2x this to this, then to half of it (the degradation prior)
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    in_channels: int = 3
    #: the classifier's classes, in logit order; class i is LoRA expert i
    classes: tuple[str, ...] = SETTING1_CLASSES
    #: the sliding views tile an image resized to (tiles * image_size)²
    tiles: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"CLIP router config: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIP router config: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"CLIP router config: unknown hidden_act {self.hidden_act!r}; one of {', '.join(ACTIVATIONS)}"
            )
        if len(self.classes) < 1 or self.projection_dim % 2:
            raise ValueError("CLIP router config: needs at least one class and an even projection_dim")
        if len(self.image_mean) != self.in_channels or len(self.image_std) != self.in_channels:
            raise ValueError("CLIP router config: image_mean and image_std need one value per input channel")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def prior_dim(self) -> int:
        """Width of the degradation prior (384 for Setting I)."""
        return self.projection_dim // 2

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def num_views(self) -> int:
        return 1 + self.tiles**2

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPRouterConfig:
        return cls(**config_fields(cls, d))

    @classmethod
    def from_official_kwargs(cls, kw: Mapping[str, Any], classes: tuple[str, ...] | None = None) -> CLIPRouterConfig:
        """From the official router description: `{"cls_num": n, "clip": CLIPVisionConfig kwargs}` (reference
        `configs.json`). Class names default to Setting I's for 3 classes."""
        clip = kw["clip"]
        n = int(kw.get("cls_num", 3))
        return cls(
            hidden_size=clip["hidden_size"],
            num_layers=clip["num_hidden_layers"],
            num_heads=clip["num_attention_heads"],
            intermediate_size=clip["intermediate_size"],
            image_size=clip["image_size"],
            patch_size=clip["patch_size"],
            projection_dim=clip["projection_dim"],
            hidden_act=clip.get("hidden_act", "quick_gelu"),
            layer_norm_eps=clip.get("layer_norm_eps", 1e-5),
            in_channels=clip.get("num_channels", 3),
            classes=tuple(classes) if classes is not None else default_classes(n),
        )


def default_classes(n: int) -> tuple[str, ...]:
    """Names for n classes when nothing names them: Setting I's for 3 (the only released router), else class0..."""
    return SETTING1_CLASSES if n == len(SETTING1_CLASSES) else tuple(f"class{i}" for i in range(n))


VARIANTS: dict[str, CLIPRouterConfig] = {
    "setting1": CLIPRouterConfig(),
    # the golden-test router: the official class with the tower shrunk (reference configs.json "tiny")
    "tiny": CLIPRouterConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
}


# --------------------------------------------------------------------------------------------------------------------
# CLIP vision tower (key layout of transformers' CLIPVisionModelWithProjection)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm in float32 whatever the weights' dtype (CUDA autocast's policy), float32 out."""
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """A linear layer in its weights' dtype (the input is cast to it)."""
    return layer(x.to(layer.weight.dtype))


class CLIPEmbeddings(nn.Module):
    """Patchify (conv, no bias), prepend the class token, add learned position embeddings."""

    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size))
        p = cfg.patch_size
        self.patch_embedding = nn.Conv2d(cfg.in_channels, cfg.hidden_size, p, stride=p, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixels: Tensor) -> Tensor:
        """(N, C, S, S) normalised views -> (N, 1 + (S/p)², D) tokens, in the weights' dtype."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixels.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        if tokens.shape[1] != self.position_embedding.num_embeddings:
            raise ValueError(
                f"CLIP router: views of {pixels.shape[-2]}x{pixels.shape[-1]} give {tokens.shape[1]} tokens, "
                f"the position table has {self.position_embedding.num_embeddings}"
            )
        return tokens + self.position_embedding.weight.to(dtype)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        d = cfg.hidden_size
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        h = self.num_heads

        def heads(layer: nn.Linear) -> Tensor:
            return _linear(layer, x).view(n, t, h, d // h).transpose(1, 2)

        # Scaled dot product, softmax over keys, 1/sqrt(head dim) scale: the same maths as the official eager path.
        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
        return _linear(self.out_proj, out.transpose(1, 2).reshape(n, t, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.quick = cfg.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        x = _linear(self.fc1, x)
        x = x * torch.sigmoid(1.702 * x) if self.quick else F.gelu(x)
        return _linear(self.fc2, x)


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block; the residual stream is float32."""

    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(_layer_norm(self.layer_norm1, x))
        return x + self.mlp(_layer_norm(self.layer_norm2, x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVisionTransformer(nn.Module):
    """Embeddings, pre-LN (spelt `pre_layrnorm` in the official keys), encoder, post-LN of the class token."""

    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """(N, C, S, S) -> (N, D) float32 pooled class token."""
        x = _layer_norm(self.pre_layrnorm, self.embeddings(pixels))
        x = self.encoder(x)
        return _layer_norm(self.post_layernorm, x[:, 0])


class CLIPVisionWithProjection(nn.Module):
    """CLIP's image tower with its projection: `image_embeds`, one vector per view."""

    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, pixels: Tensor) -> Tensor:
        return _linear(self.visual_projection, self.vision_model(pixels)).float()


class CLIPTower(nn.Module):
    """Holds the tower under `vision_tower`, as the official `CLIPTower` wrapper does (its keys say so)."""

    def __init__(self, cfg: CLIPRouterConfig) -> None:
        super().__init__()
        self.vision_tower = CLIPVisionWithProjection(cfg)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.vision_tower(pixels)


# --------------------------------------------------------------------------------------------------------------------
# The router


class CLIPRouter(nn.Module):
    """DG-Router. `forward(views)` -> `(logits (B, classes), prior (B, prior_dim))`, both float32.

    views: (B, 1 + tiles², C, S, S) normalised views from `views(images)`; view 0 is the whole image, the others
    the tiles. The global embedding is concatenated with the mean of the tile embeddings, an MLP (Linear, GELU,
    Linear, GELU) gives the prior, and a linear head the class logits.
    """

    arch = ARCH

    def __init__(self, config: CLIPRouterConfig | None = None) -> None:
        super().__init__()
        cfg = config or CLIPRouterConfig()
        self.config = cfg
        self.clip_model = CLIPTower(cfg)
        d = cfg.projection_dim
        self.de_extractor = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d // 2), nn.GELU())
        self.cls_head = nn.Linear(d // 2, cfg.num_classes)
        self.clip_model.requires_grad_(False)  # frozen, as in the official code; only the head is trained

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    def embed(self, views: Tensor) -> Tensor:
        """CLIP `image_embeds` (float32) of a flat (N, C, S, S) batch of views, all in one call."""
        return self.clip_model(views)

    def forward(self, views: Tensor) -> tuple[Tensor, Tensor]:
        if views.dim() != 5 or views.shape[1] != self.config.num_views:
            raise ValueError(
                f"CLIP router: expects (B, {self.config.num_views}, C, S, S) views, got {tuple(views.shape)}"
            )
        b, v = views.shape[:2]
        emb = self.embed(views.flatten(0, 1)).view(b, v, -1)
        features = torch.cat([emb[:, 0], emb[:, 1:].mean(dim=1)], dim=1)
        lin1, act1, lin2, act2 = self.de_extractor
        prior = act2(_linear(cast(nn.Linear, lin2), act1(_linear(cast(nn.Linear, lin1), features))))
        logits = _linear(self.cls_head, prior)
        return logits.float(), prior.float()

    def views_uint8(self, images: Tensor) -> Tensor:
        """The 8-bit views the official code hands to CLIP's processor: (B, V, S, S, C) uint8 on the CPU."""
        return router_views_uint8(images, self.config.image_size, self.config.tiles)

    def views(self, images: Tensor) -> Tensor:
        """Normalised views (B, V, C, S, S) float32 of RGB images (B, C, H, W) in [0, 1], on the images' device."""
        u8 = self.views_uint8(images).to(images.device, non_blocking=True)
        return normalize_views(u8, self.config.image_mean, self.config.image_std)

    def route(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`(logits, prior)` for RGB images (B, C, H, W) in [0, 1]: views, then one batched tower call."""
        return self(self.views(images))


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 levels, rounded to nearest.

    The official test reads 8-bit files, divides by 255 and multiplies back with truncation; for such inputs
    `x * 255` is exact, so rounding gives the very same levels. For other inputs (16-bit files, computed images)
    rounding is the nearest 8-bit picture, where truncation would darken by half a level on average. NaN counts as 0.
    """
    return (images.float().nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def router_views_uint8(images: Tensor, size: int = 336, tiles: int = 2) -> Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, 1 + tiles², size, size, C) uint8: the whole image resized to size², then
    the row-major tiles of the image resized to (tiles·size)². PIL bicubic, as the official `process_highres_image`
    (whose PIL `resize` defaults to BICUBIC and ignores the aspect ratio)."""
    from PIL import Image

    pixels = to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = torch.empty((pixels.shape[0], 1 + tiles * tiles, size, size, pixels.shape[-1]), dtype=torch.uint8)
    for b, array in enumerate(pixels):
        picture = Image.fromarray(array if array.shape[-1] != 1 else array[..., 0])
        out[b, 0] = _pil_tensor(picture.resize((size, size), Image.Resampling.BICUBIC), out.shape[-1])
        big = _pil_tensor(picture.resize((size * tiles, size * tiles), Image.Resampling.BICUBIC), out.shape[-1])
        for i in range(tiles):
            for j in range(tiles):
                out[b, 1 + i * tiles + j] = big[i * size : (i + 1) * size, j * size : (j + 1) * size]
    return out


def _pil_tensor(picture: Any, channels: int) -> Tensor:
    data = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    return data.view(picture.height, picture.width, channels)


def normalize_views(views_u8: Tensor, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> Tensor:
    """(B, V, S, S, C) uint8 -> (B, V, C, S, S) float32, as CLIPImageProcessor: `(u8 * (1/255) in float64, cast to
    float32) - mean) / std` in float32. The float64 rescale is a 256-entry table, so any device can do it exactly."""
    device = views_u8.device
    table = (torch.arange(256, dtype=torch.float64) * (1 / 255)).float().to(device)
    x = table[views_u8.long()]
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    return ((x - m) / s).permute(0, 1, 4, 2, 3).contiguous()


# --------------------------------------------------------------------------------------------------------------------
# Detection: which state dicts are DG-Routers, and their config, from keys and shapes alone

_SIGNATURE = (
    f"{_TOWER}.vision_model.embeddings.class_embedding",
    f"{_TOWER}.vision_model.embeddings.patch_embedding.weight",
    f"{_TOWER}.visual_projection.weight",
    "de_extractor.0.weight",
    "cls_head.weight",
)


def detect(sd: Mapping[str, Tensor]) -> bool:
    """True when the (canonical) state dict has the router's signature keys."""
    return all(k in sd for k in _SIGNATURE)


#: what the tensors cannot show: how attention splits the hidden width, and the MLP activation
UNSEEN_FIELDS = ("num_heads", "hidden_act")


def infer_config(sd: Mapping[str, Tensor]) -> CLIPRouterConfig:
    """The config, from shapes. What shapes cannot show (heads, activation, class names) comes from the variant with
    the same shapes, else CLIP's conventions (64 channels per head, quick GELU) and generic class names."""
    vm = f"{_TOWER}.vision_model"
    hidden, in_channels, patch = sd[f"{vm}.embeddings.patch_embedding.weight"].shape[:3]
    positions = sd[f"{vm}.embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"{positions} position embeddings is not a square grid plus the class token")
    layers = 0
    while f"{vm}.encoder.layers.{layers}.mlp.fc1.weight" in sd:
        layers += 1
    if layers == 0:
        raise ValueError("no encoder layers")
    seen: dict[str, Any] = dict(
        hidden_size=int(hidden),
        num_layers=layers,
        intermediate_size=int(sd[f"{vm}.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        image_size=int(grid * patch),
        patch_size=int(patch),
        projection_dim=int(sd[f"{_TOWER}.visual_projection.weight"].shape[0]),
        in_channels=int(in_channels),
    )
    num_classes = int(sd["cls_head.weight"].shape[0])
    for variant in VARIANTS.values():
        if all(getattr(variant, k) == v for k, v in seen.items()) and variant.num_classes == num_classes:
            return replace(variant, **seen)
    heads = max(1, seen["hidden_size"] // 64)
    return CLIPRouterConfig(**seen, num_heads=heads, classes=default_classes(num_classes))


SPEC = ArchSpec(
    name=ARCH,
    title="LoRA-IR CLIP router",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=CLIPRouterConfig.from_dict,
    build=CLIPRouter,
    variants=VARIANTS,
    obsolete_keys=OBSOLETE_KEYS,
    unseen_fields=UNSEEN_FIELDS,
    # the second file of a LoRA-IR model (see `lora_ir.SPEC.join`); it restores nothing by itself
    capabilities=Capabilities(tiling=Tiling(supported=False)),
    standalone=False,
)
