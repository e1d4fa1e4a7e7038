"""MoCE-IR behaviour that needs no golden data: configs, batching, sizes, routing, dense experts, training loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FP32_ATOL, ODD, diverse_routing_moce, make_images, random_moce

from irtool.archs.moce_ir import VARIANTS, MoCEIR, MoCEIRConfig, Routing, infer_config
from irtool.restoration.tiling import run_padded


@pytest.mark.parametrize("name", ["MoCE_IR", "MoCE_IR_S", "tiny"])
def test_config_detection_recovers_the_named_variants(name):
    model = MoCEIR(VARIANTS[name])
    assert infer_config(model.state_dict()) == VARIANTS[name]


@pytest.mark.parametrize(
    "config",
    [
        ODD,
        MoCEIRConfig(
            dim=12,
            num_blocks=(2, 1, 1, 1, 1),
            num_dec_blocks=(1, 1, 1, 1),
            heads=(1, 1, 2, 2, 4),
            num_refinement_blocks=0,
        ),
        MoCEIRConfig(
            dim=16,
            num_experts=5,
            rank_type="lin",
            rank=2,
            complexity_scale="min",
            num_blocks=(1, 1, 1, 1),
            num_dec_blocks=(1, 1, 1),
        ),
        MoCEIRConfig(
            dim=16,
            num_experts=2,
            rank_type="exp",
            rank=3,
            complexity_scale="none",
            num_blocks=(1, 1, 1, 1),
            num_dec_blocks=(1, 1, 1),
        ),
    ],
    ids=["odd", "five-levels", "five-experts-lin-min", "two-experts-exp-none"],
)
def test_config_detection_recovers_unreleased_configs(config):
    detected = infer_config(MoCEIR(config).state_dict())
    # top_k and with_complexity leave no trace in the tensors; everything else must come back
    assert detected == MoCEIRConfig.from_dict({**config.to_dict(), "top_k": 1, "with_complexity": False})


def test_released_parameter_counts():
    assert sum(p.numel() for p in MoCEIR(VARIANTS["MoCE_IR"]).parameters()) == 25_353_796
    assert sum(p.numel() for p in MoCEIR(VARIANTS["MoCE_IR_S"]).parameters()) == 11_477_752


def test_complexity_buffers_are_expert_sizes_over_the_largest():
    """MoCE_IR_S, lowest-resolution decoder (128 channels): experts of 8,976 / 20,000 / 48,192 / 129,152 params."""
    layer = MoCEIR(VARIANTS["MoCE_IR_S"]).moce_layers[0]
    sizes = torch.tensor([8976.0, 20000.0, 48192.0, 129152.0])
    torch.testing.assert_close(layer.routing.complexity, sizes / sizes.max())
    assert [sum(p.numel() for p in ex.parameters()) for ex in layer.experts] == sizes.int().tolist()


def test_official_kwargs_map_onto_the_config():
    official = {
        "dim": 32,
        "num_blocks": [4, 6, 6, 8],
        "num_dec_blocks": [2, 4, 4],
        "num_refinement_blocks": 4,
        "heads": [1, 2, 4, 8],
        "topk": 1,
        "rank": 2,
        "rank_type": "spread",
        "depth_type": "constant",
        "stage_depth": [1, 1, 1],
        "LayerNorm_type": "WithBias",
        "bias": False,
        "levels": 4,
    }
    assert MoCEIRConfig.from_official_kwargs(official) == VARIANTS["MoCE_IR_S"]


def test_inconsistent_configs_are_refused():
    with pytest.raises(ValueError, match="levels"):
        MoCEIRConfig(num_blocks=(1, 1, 1), heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="top_k"):
        MoCEIRConfig(top_k=5)


def test_a_batch_equals_its_images_one_by_one():
    images = make_images(4, 32, 40)
    model = diverse_routing_moce(VARIANTS["tiny"], images)
    with torch.no_grad():
        batched = model.run(images)
        single = [model.run(images[i : i + 1]) for i in range(4)]
    for i, one in enumerate(single):
        assert torch.equal(batched.routing.experts[i], one.routing.experts[0])
        torch.testing.assert_close(batched.routing.gates[i], one.routing.gates[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(batched.output[i : i + 1], one.output, atol=1e-5, rtol=0)


def test_top2_batches_and_imposed_routing_per_image():
    """With top-2 and routing imposed per image (every image a different pair), batch equals one by one."""
    model = random_moce(ODD, seed=3)
    images = make_images(3, 24, 16)
    layers = len(model.moce_layers)
    pairs = torch.tensor([[0, 1], [2, 0], [1, 2]])
    experts = pairs[:, None, :].expand(3, layers, 2).contiguous()
    gates = torch.tensor([[0.6, 0.3], [0.5, 0.45], [0.9, 0.05]])[:, None, :].expand(3, layers, 2).contiguous()
    routing = Routing(experts, gates)
    with torch.no_grad():
        batched = model.run(images, routing)
        for i in range(3):
            one = model.run(images[i : i + 1], routing[i])
            torch.testing.assert_close(batched.output[i : i + 1], one.output, atol=1e-5, rtol=0)
            assert torch.equal(one.routing.experts, routing[i].experts)
    # the imposed choice really matters: another pair gives another output
    other = Routing(experts.flip(-1), gates)
    with torch.no_grad():
        assert not torch.allclose(model.run(images, other).output, batched.output, atol=1e-4)


def test_an_imposed_routing_reproduces_the_routers_own_choice():
    model = random_moce(VARIANTS["tiny"], seed=3)
    images = make_images(2, 32, 32)
    with torch.no_grad():
        own = model.run(images)
        replay = model.run(images, Routing(own.routing.experts, own.routing.gates))
    torch.testing.assert_close(own.output, replay.output, atol=FP32_ATOL, rtol=0)  # imposed path: FP32_ATOL
    with pytest.raises(ValueError, match="routing is for 1 images"):
        model.run(images, own.routing[0])


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (5, 3), (64, 24), (1, 1)])
def test_any_size_is_padded_and_cropped_back(size):
    """`run` takes multiples of 8 and refuses other sizes; `model(x)` and `run_padded` pad (reflect) and crop back."""
    model = random_moce(VARIANTS["tiny"], seed=1)
    x = make_images(1, *size)
    h, w = size
    if h % 8 or w % 8:
        with pytest.raises(ValueError, match="not a multiple of 8 px"):
            model.run(x)
    with torch.no_grad():
        out = run_padded(model, x).output
        called = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(called, out, atol=FP32_ATOL, rtol=0)  # the same computation
    if h > 7 and w > 7:  # reflect padding to a multiple of 8, then a crop: same as padding by hand
        padded = F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect")
        with torch.no_grad():
            by_hand = model.run(padded).output[..., :h, :w]
        torch.testing.assert_close(out, by_hand, atol=FP32_ATOL, rtol=0)  # padded inside vs by hand: FP32_ATOL


def test_dense_experts_equal_sparse_for_top1_and_top2():
    for config, seed in ((VARIANTS["tiny"], 2), (ODD, 5)):
        model = random_moce(config, seed)
        x = make_images(3, 32, 24)
        with torch.no_grad():
            sparse = model.run(x)
            dense = model.run(x, dense=True)
        assert torch.equal(sparse.routing.experts, dense.routing.experts)
        torch.testing.assert_close(dense.output, sparse.output, atol=1e-6, rtol=0)


def test_eval_routing_is_deterministic_and_noise_is_opt_in():
    model = random_moce(VARIANTS["tiny"], seed=0)
    x = make_images(2, 32, 32)
    with torch.no_grad():
        a, b = model.run(x), model.run(x)
        assert torch.equal(a.output, b.output) and torch.equal(a.routing.gates, b.routing.gates)
        n1 = model.run(x, routing_noise=torch.Generator().manual_seed(7))
        n2 = model.run(x, routing_noise=torch.Generator().manual_seed(7))
        torch.manual_seed(11)
        g1 = model.run(x, routing_noise=True)
        torch.manual_seed(11)
        g2 = model.run(x, routing_noise=True)
    assert torch.equal(n1.routing.gates, n2.routing.gates) and torch.equal(g1.routing.gates, g2.routing.gates)
    # with noise the gates are softmax values of the noisy logits, so they move away from the clean ones
    assert not torch.allclose(n1.routing.gates, a.routing.gates)
    torch.testing.assert_close(n1.routing.logits, a.routing.logits)  # reported logits stay the clean ones


def _official_aux(logits: torch.Tensor, noisy: torch.Tensor, complexity: torch.Tensor, bias: bool) -> torch.Tensor:
    """The MoCE-IR balance loss for one layer, written from its definition (top-1)."""
    importance = torch.softmax(logits, -1).sum(0) * (complexity if bias else 1.0)
    cv_imp = (importance.std(unbiased=True) / (importance.mean() + 1e-8)) ** 2
    threshold = noisy.max(dim=-1, keepdim=True).values
    std = 1.0 / logits.shape[-1]
    normal_cdf = torch.tensor(
        [[0.5 * (1 + math.erf(v / math.sqrt(2))) for v in row] for row in ((threshold - logits) / std).tolist()]
    )
    load = (1 - normal_cdf).mean(0)
    cv_load = (load.std(unbiased=True) / (load.mean() + 1e-8)) ** 2
    return 0.5 * cv_imp + 0.5 * cv_load


@pytest.mark.parametrize("complexity_bias", [False, True])
def test_training_returns_the_official_aux_loss(complexity_bias):
    config = MoCEIRConfig.from_dict({**VARIANTS["tiny"].to_dict(), "with_complexity": complexity_bias})
    model = random_moce(config, seed=4).train()
    x = make_images(4, 32, 32)
    gen = torch.Generator().manual_seed(5)
    result = model.run(x, routing_noise=gen)
    assert result.aux_loss is not None and result.aux_loss.requires_grad

    # replay the noise draws (one (B, E) draw per MoCE layer, in forward order) and recompute the loss by hand
    replay = torch.Generator().manual_seed(5)
    expected = []
    for layer_index, layer in enumerate(model.moce_layers):
        logits = result.routing.logits[:, layer_index].detach()
        noisy = logits + torch.randn(logits.shape, generator=replay) * 0.25
        assert torch.equal(result.routing.experts[:, layer_index, 0], noisy.argmax(-1))
        expected.append(_official_aux(logits, noisy, layer.routing.complexity, complexity_bias))
    torch.testing.assert_close(result.aux_loss.detach(), torch.stack(expected).mean(), atol=1e-6, rtol=1e-5)

    # the loss trains the routers; only the chosen experts receive gradients
    (result.output.abs().mean() + result.aux_loss).backward()
    layer0 = model.moce_layers[0]
    assert layer0.routing.gate[2].weight.grad is not None
    chosen = set(result.routing.experts[:, 0, 0].tolist())
    for e in range(len(layer0.experts)):
        grad = layer0.expert(e).proj[2].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == (e in chosen)


def test_eval_returns_no_aux_loss_and_reports_routing_per_layer():
    model = random_moce(VARIANTS["tiny"], seed=0)
    with torch.no_grad():
        result = model.run(make_images(2, 16, 16))
    assert result.aux_loss is None
    layers = len(model.moce_layer_names)
    assert layers == 5 and model.moce_layer_names[0] == "dec.0.2.layers.0.adapter"
    assert result.routing.experts.shape == (2, layers, 1) and result.routing.gates.shape == (2, layers, 1)
    assert result.routing.logits.shape == (2, layers, 4)
    torch.testing.assert_close(result.routing.gates[..., 0], torch.softmax(result.routing.logits, -1).max(-1).values)


def test_bfloat16_weights_run():
    model = random_moce(VARIANTS["tiny"], seed=0)
    x = make_images(1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().mean() < 0.05
