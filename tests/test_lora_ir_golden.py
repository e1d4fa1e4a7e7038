"""LoRA-IR against golden data produced by the official code (../shared/reference/lora-ir).

Measured on this machine (CPU, fp32): router image_embeds 1.2e-6, de_prior 1.5e-7, logits 7.2e-7; degradation
embedding (intro_de) 2.4e-7; IR outputs given the stored prior and logits (values up to 3.4, every expert included):
merged path bit-identical with one thread (as the reference was made), <= 9.5e-7 with two; dense path <= 1.7e-6;
end to end (our router's prior and logits) 7.2e-7. The reference README suggests 1e-4 for IR outputs; we hold them
to the issue's 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import FP32_ATOL

import irtool
from irtool.archs.clip_router import VARIANTS as ROUTER_VARIANTS
from irtool.archs.clip_router import CLIPRouterConfig, normalize_views
from irtool.archs.lora_ir import VARIANTS, LoRAIRNetConfig, LoRARouting
from irtool.restoration.tiling import pad_to_multiple, run_padded

ATOL = 1e-5  # fp32: router embeddings, prior, logits; IR outputs

# bf16 router (bf16 weights, CUDA autocast's policy) against the reference's CPU emulation of the official CUDA path.
# The reference README suggests ~2e-2 on logits and 5e-3 on de_prior; measured here: logits 1.6e-2, de_prior 2.0e-3,
# image_embeds 1.6e-2 (one bf16 step at |x| in [2, 4)). Embeddings get two bf16 steps: GEMM accumulation order in
# bf16 differs between CPUs and from the emulation.
BF16_ATOL = {"logits": 2e-2, "de_prior": 5e-3, "image_embeds": 3.2e-2}


@pytest.fixture(scope="module")
def folder(reference):
    return reference / "lora-ir"


@pytest.fixture(scope="module")
def golden(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "golden_tiny_io.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def model(folder):
    return irtool.load_model(folder / "golden_tiny_ir.pth", device="cpu", router=folder / "golden_tiny_router.pth")


@pytest.fixture(scope="module")
def model_bf16_router(folder):
    m = irtool.load_model(folder / "golden_tiny_ir.pth", device="cpu", router=folder / "golden_tiny_router.pth")
    m.router.to(torch.bfloat16)
    return m


IMAGES = ["img0", "img1"]


def _ir(model, x, prior, logits, **kwargs):
    """The restoration network on x of any size: zero-padded to its multiple and cropped back, as the official
    `check_image_size` does inside the network (here the caller pads)."""
    out = model.ir(pad_to_multiple(x, model.ir.size_multiple, "zeros"), prior, logits, **kwargs)
    return out[..., : x.shape[-2], : x.shape[-1]]


def test_golden_checkpoints_load_strictly_with_the_tiny_configs(model, folder):
    configs = json.loads((folder / "configs.json").read_text())
    assert model.ir.config == LoRAIRNetConfig.from_official_kwargs(configs["tiny"]["ir"]) == VARIANTS["tiny"]
    router_config = CLIPRouterConfig.from_official_kwargs(configs["tiny"]["router"])
    assert model.router.config == router_config == ROUTER_VARIANTS["tiny"]
    assert sum(p.numel() for p in model.ir.parameters()) == 2_096_854
    assert sum(p.numel() for p in model.router.parameters()) == 1_667_843
    # the bf16 file is upcast exactly on the CPU
    stored = torch.load(folder / "golden_tiny_router.pth", weights_only=True)["params"]
    assert all(p.dtype == torch.float32 for p in model.router.parameters())
    assert torch.equal(model.router.cls_head.weight, stored["cls_head.weight"].float())


def test_preprocessor_matches_the_official_views_exactly(model, golden):
    for img in IMAGES:
        views = model.router.views_uint8(golden[f"{img}.input"])
        assert torch.equal(views[0], golden[f"{img}.router_views_uint8"]), img
    view0 = normalize_views(golden["img0.router_views_uint8"][None])[0, :1]
    assert torch.equal(view0, golden["img0.router_views_view0"])
    assert torch.equal(model.router.views(golden["img0.input"])[0, :1], golden["img0.router_views_view0"])


def test_preprocessor_constants_equal_the_official_processor(folder):
    pre = json.loads((folder / "configs.json").read_text())["preprocessor"]
    cfg = ROUTER_VARIANTS["setting1"]
    assert (pre["size"], pre["crop_size"], pre["resample"]) == (cfg.image_size, cfg.image_size, 3)  # 3 = bicubic
    assert tuple(pre["image_mean"]) == cfg.image_mean and tuple(pre["image_std"]) == cfg.image_std
    assert pre["rescale_factor"] == 1 / 255


@pytest.mark.parametrize("img", IMAGES)
def test_fp32_router_matches(model, golden, img):
    views = model.router.views(golden[f"{img}.input"])
    with torch.no_grad():
        embeds = model.router.embed(views[0])
        routing = model.route(golden[f"{img}.input"])
    prefix = f"{img}.router.fp32"
    torch.testing.assert_close(embeds, golden[f"{prefix}.image_embeds"], atol=ATOL, rtol=0)
    torch.testing.assert_close(routing.prior, golden[f"{prefix}.de_prior"], atol=ATOL, rtol=0)
    torch.testing.assert_close(routing.logits, golden[f"{prefix}.logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("img", IMAGES)
def test_bf16_router_matches_the_official_mixed_precision_path(model_bf16_router, golden, img):
    router = model_bf16_router.router
    assert router.cls_head.weight.dtype == torch.bfloat16
    views = router.views(golden[f"{img}.input"])
    with torch.no_grad():
        embeds = router.embed(views[0])
        logits, prior = router(views)
    prefix = f"{img}.router.bf16_cuda_emul"
    assert logits.dtype == prior.dtype == torch.float32
    torch.testing.assert_close(embeds, golden[f"{prefix}.image_embeds"], atol=BF16_ATOL["image_embeds"], rtol=0)
    torch.testing.assert_close(prior, golden[f"{prefix}.de_prior"], atol=BF16_ATOL["de_prior"], rtol=0)
    torch.testing.assert_close(logits, golden[f"{prefix}.logits"], atol=BF16_ATOL["logits"], rtol=0)
    assert logits.argmax().item() == golden[f"{img}.router.fp32.logits"].argmax().item()


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("router_mode,output", [("fp32", "output_fp32"), ("bf16_cuda_emul", "output_official")])
@pytest.mark.parametrize("dense", [False, True], ids=["merged", "dense"])
def test_ir_outputs_given_the_stored_prior_and_logits(model, golden, img, router_mode, output, dense):
    x = golden[f"{img}.input"]
    prior, logits = golden[f"{img}.router.{router_mode}.de_prior"], golden[f"{img}.router.{router_mode}.logits"]
    with torch.no_grad():
        out = _ir(model, x, prior, logits, dense=dense)
        imposed = run_padded(model, x, routing=LoRARouting(logits, prior), dense=dense).output
    torch.testing.assert_close(out, golden[f"{img}.ir.{output}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(imposed, out, atol=FP32_ATOL, rtol=0)  # run() vs ir(): another path, FP32_ATOL


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("router_mode,stored", [("fp32", "fp32"), ("bf16_cuda_emul", "official")])
def test_degradation_embedding_of_the_prior(model, golden, img, router_mode, stored):
    seen = {}
    hook = model.ir.intro_de[3].register_forward_hook(lambda m, i, o: seen.__setitem__("e", o))
    try:
        with torch.no_grad():
            prefix = f"{img}.router.{router_mode}"
            _ir(model, golden[f"{img}.input"], golden[f"{prefix}.de_prior"], golden[f"{prefix}.logits"])
    finally:
        hook.remove()
    torch.testing.assert_close(seen["e"], golden[f"{img}.ir.intro_de_out_{stored}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("expert", [0, 1, 2])
def test_every_expert_matches(model, golden, expert):
    x, prior = golden["img0.input"], golden["img0.router.fp32.de_prior"]
    logits = F.one_hot(torch.tensor([expert]), 3).float()
    with torch.no_grad():
        merged = model.ir(x, prior, logits)
        dense = model.ir(x, prior, logits, dense=True)
    torch.testing.assert_close(merged, golden[f"img0.ir.output_expert{expert}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(dense, merged, atol=ATOL, rtol=0)


def test_the_experts_really_differ(golden):
    outs = [golden[f"img0.ir.output_expert{e}"] for e in range(3)]
    assert min((outs[a] - outs[b]).abs().max().item() for a, b in [(0, 1), (0, 2), (1, 2)]) > 1e-2


@pytest.mark.parametrize("img", IMAGES)
def test_end_to_end_restore_routes_and_restores_like_the_official_fp32_pipeline(model, golden, img):
    with torch.no_grad():
        result = run_padded(model, golden[f"{img}.input"])
    torch.testing.assert_close(result.routing.logits, golden[f"{img}.router.fp32.logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(result.output, golden[f"{img}.ir.output_fp32"], atol=ATOL, rtol=0)
    [(name, probability)] = model.classify(result.routing)
    assert name == "raindrop"  # both golden images route to expert 2 (reference README)
    assert probability == pytest.approx(golden[f"{img}.router.fp32.logits"].softmax(-1)[0, 2].item(), abs=1e-5)


def test_a_batch_of_both_golden_images(model, golden):
    """Different sizes cannot share a batch, so img1 is cropped to img0's size; each image keeps its own routing."""
    x = torch.cat([golden["img0.input"], golden["img1.input"][..., :64, :64]])
    with torch.no_grad():
        both = model.run(x)
        alone = [model.run(x[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(both.output, torch.cat([a.output for a in alone]), atol=ATOL, rtol=0)
    torch.testing.assert_close(both.routing.logits, torch.cat([a.routing.logits for a in alone]), atol=ATOL, rtol=0)
