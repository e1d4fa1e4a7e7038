"""Small LoRA-IR builders for the tests: random-weight networks and routers in which experts and the prior matter."""

from __future__ import annotations

import torch

from irtool.archs.clip_router import CLIPRouter, CLIPRouterConfig
from irtool.archs.lora_ir import LoRAIR, LoRAIRNet, LoRAIRNetConfig

#: two levels, width 16, prior of 16 channels: runs in milliseconds
MICRO_NET = LoRAIRNetConfig(
    width=16, enc_blocks=(1, 2), middle_blocks=1, dec_blocks=(1, 1), rank=2, prior_dim=16, dam_hidden=8
)
#: one layer, 28-px views (2x2 patches of 14 px), 32-d embeddings -> a 16-d prior, 3 classes; one head, as detection
#: assumes for a width under 64 (heads do not show in the weights)
MICRO_ROUTER = CLIPRouterConfig(
    hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, image_size=28, patch_size=14, projection_dim=32
)


def random_lora_net(config: LoRAIRNetConfig = MICRO_NET, seed: int = 0) -> LoRAIRNet:
    """Plain init leaves the experts at zero (LoRA B starts at 0) and the residual scales at 0, so the experts, the
    DAM gates and the blocks are given visible weights, as the official golden data does."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = LoRAIRNet(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("lora_B_list"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("beta", "gamma")):
                p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    return net


def random_router(config: CLIPRouterConfig = MICRO_ROUTER, seed: int = 0) -> CLIPRouter:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = CLIPRouter(config).eval()
    with torch.no_grad():
        router.cls_head.weight.mul_(20.0)  # logit margins that tell images apart
        for p in router.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return router


def random_lora_ir(seed: int = 0) -> LoRAIR:
    return LoRAIR(random_lora_net(MICRO_NET, seed), random_router(MICRO_ROUTER, seed)).eval()


def one_hot_logits(experts: list[int], num_experts: int = 3) -> torch.Tensor:
    """Logits whose top-1 is the given expert per image (with a margin, like a confident router)."""
    return torch.nn.functional.one_hot(torch.tensor(experts), num_experts).float() * 3.0
