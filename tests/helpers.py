"""Small builders shared by the tests: random-weight networks that exercise their experts, and test images."""

from __future__ import annotations

import torch

from irtool.archs.moce_ir import MoCEIR, MoCEIRConfig

#: Outputs of order 1 computed twice by *different* module instances or code paths (a loaded copy, a padded call, a
#: broadcast routing) agree only to fp32 rounding: the same sums in another order or blocking differ by a few ulps
#: (eps 1.2e-7) per op, about 2e-7 measured on the tiny configs; 1e-6 leaves room for any x86-64 CPU and thread count
#: while still catching a real difference (a wrong expert or weight moves outputs by > 1e-3).
FP32_ATOL = 1e-6

#: not a released config: 3 levels, 3 experts top-2, biased, BiasFree, 2.66 FFN, constant ranks
ODD = MoCEIRConfig(
    dim=8,
    num_blocks=(1, 2, 1),
    num_dec_blocks=(1, 2),
    num_refinement_blocks=2,
    heads=(1, 2, 2),
    ffn_expansion_factor=2.66,
    num_experts=3,
    top_k=2,
    rank_type="constant",
    rank=3,
    bias=True,
    layernorm_type="BiasFree",
)


def random_moce(config: MoCEIRConfig, seed: int = 0) -> MoCEIR:
    """A MoCE-IR with random weights in which routing and experts visibly matter.

    Plain initialisation leaves the routers nearly uniform and the expert branches ~1e-3 of their residual, so
    router weights, expert outputs and attention temperatures are scaled up (as the official golden data does).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MoCEIR(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("temperature"):
                p.copy_(torch.rand(p.shape, generator=gen) * 4 + 2)
            elif "routing" in name:
                p.mul_(10.0)
            elif name.endswith("proj.2.weight") and ".experts." in name:
                p.mul_(200.0)
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def diverse_routing_moce(config: MoCEIRConfig, images: torch.Tensor, tries: int = 30) -> MoCEIR:
    """A random MoCE-IR whose routers send the given images to different experts somewhere (first seed that does)."""
    for seed in range(tries):
        model = random_moce(config, seed)
        with torch.no_grad():
            experts = model.run(images).routing.experts
        if len({tuple(e.flatten().tolist()) for e in experts}) > 1:
            return model
    raise AssertionError(f"no seed in 0..{tries - 1} routes these images differently")


def make_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] that differ in brightness, texture and noise, so routers tell them apart."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    images = []
    for i in range(n):
        base = torch.stack([xx, yy, (xx + yy) / 2]) * (0.3 + 0.7 * (i + 1) / n)
        stripes = 0.5 + 0.5 * torch.sin(xx * (4 + 6 * i) * 3.14159 + i)
        noise = torch.randn(3, height, width, generator=gen) * (0.05 * i)
        images.append((0.6 * base + 0.3 * stripes + noise).clamp(0, 1))
    return torch.stack(images)
