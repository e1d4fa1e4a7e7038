"""LoRA-IR network and router: released key lists, config detection, merged experts, class grouping, TLC pooling,
the routing object and the preprocessing, on small random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FP32_ATOL, make_images
from helpers_lora import MICRO_NET, MICRO_ROUTER, one_hot_logits, random_lora_ir, random_lora_net, random_router
from torch.utils.flop_counter import FlopCounterMode

from irtool.archs import clip_router, lora_ir
from irtool.archs.clip_router import CLIPRouter, CLIPRouterConfig, router_views_uint8, to_uint8
from irtool.archs.lora_ir import LoRAIR, LoRAIRConfig, LoRAIRNet, LoRAIRNetConfig, LoRARouting, box_mean
from irtool.loading import build_model
from irtool.restoration.tiling import pad_to_multiple

# --------------------------------------------------------------------------------------------------------------------
# Released key lists (built on the meta device: no memory, no time)


def _tsv(path):
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        rows.append((key, dims, getattr(torch, dtype.split(".")[1])))
    return rows


@pytest.mark.parametrize(
    "name,arch,params",
    [("ir", "lora_ir", 81_656_367), ("router", "clip_router", 305_770_755)],
)
def test_released_key_lists_are_detected_and_load_strictly(reference, name, arch, params):
    rows = _tsv(reference / "lora-ir" / f"state_dict_setting1_{name}.tsv")
    sd = {key: torch.empty(shape, dtype=dtype, device="meta") for key, shape, dtype in rows}
    if arch == "clip_router":  # older transformers saved this buffer; it must be ignored
        key = "clip_model.vision_tower.vision_model.embeddings.position_ids"
        sd[key] = torch.empty(1, 577, dtype=torch.long, device="meta")
    with torch.device("meta"):
        model = build_model(sd, {}, f"setting1_{name}.pth")  # detect, drop obsolete keys, strict load
    assert model.arch == arch
    assert model.config == {"lora_ir": lora_ir.VARIANTS, "clip_router": clip_router.VARIANTS}[arch]["setting1"]
    expected = [(key, shape) for key, shape, _ in rows]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected  # same keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == params


def test_setting1_class_names_and_the_pair_config():
    cfg = LoRAIRConfig(lora_ir.VARIANTS["setting1"], clip_router.VARIANTS["setting1"])
    assert cfg.classes == ("snow", "rain", "raindrop") and cfg.size_multiple == 16
    assert LoRAIRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="4 classes but the network 3 experts"):
        LoRAIRConfig(lora_ir.VARIANTS["setting1"], CLIPRouterConfig(classes=("a", "b", "c", "d")))
    with pytest.raises(ValueError, match="prior has 16 channels"):
        LoRAIRConfig(lora_ir.VARIANTS["setting1"], MICRO_ROUTER)


# --------------------------------------------------------------------------------------------------------------------
# Config detection


@pytest.mark.parametrize(
    "config",
    [
        MICRO_NET,
        LoRAIRNetConfig(
            width=32,
            enc_blocks=(2, 1, 3),
            middle_blocks=2,
            dec_blocks=(1, 2, 1),
            rank=3,
            num_experts=5,
            prior_dim=24,
            dam_hidden=16,
            in_channels=1,
        ),
    ],
    ids=["micro", "odd"],
)
def test_network_config_detection_round_trips(config):
    with torch.device("meta"):
        sd = LoRAIRNet(config).state_dict()
    assert lora_ir.detect(sd) and not clip_router.detect(sd)
    assert lora_ir.infer_config(sd) == config
    assert LoRAIRNetConfig.from_dict(config.to_dict()) == config


def test_router_config_detection_uses_variants_then_clip_conventions():
    with torch.device("meta"):
        tiny = CLIPRouter(clip_router.VARIANTS["tiny"]).state_dict()
        odd_config = CLIPRouterConfig(
            hidden_size=128,
            num_layers=3,
            num_heads=8,
            intermediate_size=256,
            image_size=56,
            patch_size=14,
            projection_dim=64,
            classes=("a", "b"),
        )
        odd = CLIPRouter(odd_config).state_dict()
    assert clip_router.detect(tiny) and not lora_ir.detect(tiny)
    assert clip_router.infer_config(tiny) == clip_router.VARIANTS["tiny"]  # 4 heads: from the variant
    found = clip_router.infer_config(odd)
    # heads do not show in the weights: CLIP's 64 channels per head; classes get generic names
    shape = (found.hidden_size, found.num_layers, found.num_heads, found.image_size, found.projection_dim)
    assert shape == (128, 3, 2, 56, 64)
    assert found.classes == ("class0", "class1")


def test_official_kwargs_and_bad_configs():
    kw = {
        "img_channel": 3,
        "width": 64,
        "enc_blk_nums": [1, 1, 1, 28],
        "middle_blk_num": 1,
        "dec_blk_nums": [1, 1, 1, 1],
        "train_size": [1, 3, 256, 256],
        "r": 8,
        "num_experts": 3,
        "top_k": 1,
    }
    assert LoRAIRNetConfig.from_official_kwargs(kw) == lora_ir.VARIANTS["setting1"]
    assert lora_ir.VARIANTS["setting1"].tlc_px == 384
    with pytest.raises(ValueError, match="same, non-zero number of levels"):
        LoRAIRNetConfig(enc_blocks=(1, 1), dec_blocks=(1,))
    with pytest.raises(ValueError, match="width must be at least 16"):
        LoRAIRNetConfig(width=8)
    with pytest.raises(ValueError, match="top_k"):
        LoRAIRNetConfig(top_k=4)
    with pytest.raises(ValueError, match="num_heads"):
        CLIPRouterConfig(hidden_size=100, num_heads=16)


# --------------------------------------------------------------------------------------------------------------------
# Experts: merged once per class, grouped by class, equal to the dense gated path


def _prior(n, dim=16, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_merged_experts_equal_the_dense_gated_path_and_every_expert_matters():
    net = random_lora_net()
    x, prior = make_images(3, 24, 40), _prior(3)
    with torch.no_grad():
        outs = []
        for e in range(3):
            logits = one_hot_logits([e] * 3)
            merged, dense = net(x, prior, logits), net(x, prior, logits, dense=True)
            torch.testing.assert_close(merged, dense, atol=1e-5, rtol=0)
            outs.append(merged)
    assert min((outs[a] - outs[b]).abs().max().item() for a, b in [(0, 1), (0, 2), (1, 2)]) > 1e-2


def test_the_merge_is_exactly_w0_plus_scaled_b_times_a():
    conv = random_lora_net().encoders[0].blocks[0].conv2  # depthwise 3x3: the raw-reshape convention matters
    for e in range(3):
        expected = conv.conv.weight + 2.0 * (conv.lora_B_list[e] @ conv.lora_A_list[e]).view(conv.conv.weight.shape)
        assert torch.equal(conv.merged_weight(e), expected)


def test_a_batch_of_mixed_classes_is_grouped_and_equals_its_images_one_by_one():
    net = random_lora_net()
    x, prior = make_images(5, 20, 28), _prior(5)
    logits = one_hot_logits([2, 0, 2, 1, 0])
    with torch.no_grad():
        batch = net(x, prior, logits)
        alone = torch.cat([net(x[i : i + 1], prior[i : i + 1], logits[i : i + 1]) for i in range(5)])
        dense = net(x, prior, logits, dense=True)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch, dense, atol=1e-5, rtol=0)


def test_each_class_group_runs_one_plain_pass(monkeypatch):
    net = random_lora_net()
    x, prior = make_images(4, 16, 16), _prior(4)
    passes = []
    original = LoRAIRNet._forward

    def counting(self, inp, p, state):
        passes.append((inp.shape[0], state.expert))
        return original(self, inp, p, state)

    monkeypatch.setattr(LoRAIRNet, "_forward", counting)
    with torch.no_grad():
        net(x, prior, one_hot_logits([1, 0, 1, 1]))
    assert sorted(passes, key=lambda p: p[1]) == [(1, 0), (3, 1)]


def test_a_cached_pass_costs_exactly_a_plain_conv_network():
    net = random_lora_net()
    x, prior, logits = make_images(1, 32, 32), _prior(1), one_hot_logits([1])
    with torch.no_grad():
        net(x, prior, logits)  # merges expert 1 once
        with FlopCounterMode(display=False) as cached:
            net(x, prior, logits)
        with FlopCounterMode(display=False) as dense:
            net(x, prior, logits, dense=True)
    cached_flops = cached.get_flop_counts()["Global"]
    assert torch.ops.aten.mm not in cached_flops and torch.ops.aten.bmm not in cached_flops  # no merging left
    # dense runs the base conv and 3 expert convs per layer: exactly 4x the cached conv work
    assert dense.get_flop_counts()["Global"][torch.ops.aten.convolution] == 4 * cached_flops[torch.ops.aten.convolution]


def test_merged_weights_are_cached_per_class_and_dropped_when_weights_change():
    net = random_lora_net()
    x, prior = make_images(1, 16, 16), _prior(1)
    conv = net.intro
    with torch.no_grad():
        net(x, prior, one_hot_logits([0]))
        net(x, prior, one_hot_logits([2]))
        assert sorted(conv._merged) == [0, 2]
        cached = conv.merged_weight(0)
        assert conv.merged_weight(0) is cached
        before = net(x, prior, one_hot_logits([0]))
        conv.lora_B_list.add_(0.5)  # an in-place change (optimizer step, load_state_dict) invalidates the merge
        assert conv.merged_weight(0) is not cached
        after = net(x, prior, one_hot_logits([0]))
        fresh = random_lora_net()
        fresh.load_state_dict(net.state_dict())
        # another instance merges afresh: equal to fp32 rounding (FP32_ATOL)
        torch.testing.assert_close(after, fresh(x, prior, one_hot_logits([0])), atol=FP32_ATOL, rtol=0)
        assert not torch.equal(before, after)
    net.to(torch.float64)  # moving or casting drops every cached merge
    assert all(not c._merged for c in net.lora_convs())
    with torch.no_grad():
        assert net(x.double(), prior.double(), one_hot_logits([0]).double()).dtype == torch.float64
    net.clear_merged()
    assert all(not c._merged for c in net.lora_convs())


def test_no_cache_while_training_so_gradients_reach_the_experts():
    net = random_lora_net().train()
    net(make_images(1, 16, 16), _prior(1), one_hot_logits([1])).square().mean().backward()
    assert all(not c._merged for c in net.lora_convs())
    assert net.intro.lora_B_list.grad[1].abs().sum() > 0 and net.intro.lora_B_list.grad[0].abs().sum() == 0


def test_top2_routing_merges_per_image_and_equals_dense():
    from dataclasses import replace

    net = random_lora_net(replace(MICRO_NET, top_k=2))
    x, prior = make_images(2, 16, 24), _prior(2)
    logits = torch.tensor([[0.3, 1.2, -0.5], [2.0, -1.0, 0.4]])
    with torch.no_grad():
        torch.testing.assert_close(net(x, prior, logits), net(x, prior, logits, dense=True), atol=1e-5, rtol=0)
    gates = LoRARouting(logits, prior, top_k=2).gates
    assert gates[0, 2] == 0 and gates[1, 1] == 0
    torch.testing.assert_close(gates.sum(-1), torch.ones(2))


@pytest.mark.parametrize("size", [(16, 16), (17, 30), (5, 9)])
def test_any_size_is_zero_padded_to_16_and_cropped_back(size):
    """The network takes multiples of its size multiple and refuses others; the caller zero-pads (as the official
    `check_image_size` does inside) and crops back."""
    net = random_lora_net()
    x = make_images(1, *size)
    if size[0] % 4 or size[1] % 4:
        with pytest.raises(ValueError, match="not a multiple of 4 px"):
            net(x, _prior(1), one_hot_logits([1]))
    with torch.no_grad():
        out = net(pad_to_multiple(x, net.size_multiple, "zeros"), _prior(1), one_hot_logits([1]))[
            ..., : size[0], : size[1]
        ]
        padded = F.pad(x, (0, -size[1] % 4, 0, -size[0] % 4))  # MICRO_NET has 2 levels: multiple of 4
        manual = net._forward(padded, _prior(1), lora_ir._Pass(expert=1))[..., : size[0], : size[1]]
    assert out.shape == x.shape
    torch.testing.assert_close(out, manual, atol=FP32_ATOL, rtol=0)  # padded inside vs by hand: FP32_ATOL


# --------------------------------------------------------------------------------------------------------------------
# TLC pooling


def _box_mean_reference(x, k):
    """Mean over every k x k window inside x, replicate-padded and centred (NAFNet's TLC AvgPool2d)."""
    h, w = x.shape[-2:]
    kh, kw = min(k, h), min(k, w)
    out = F.avg_pool2d(x, (kh, kw), stride=1)
    bh, bw = out.shape[-2:]
    return F.pad(out, ((w - bw) // 2, (w - bw + 1) // 2, (h - bh) // 2, (h - bh + 1) // 2), mode="replicate")


@pytest.mark.parametrize("shape,k", [((2, 3, 9, 13), 4), ((1, 2, 20, 7), 5), ((1, 1, 6, 30), 6), ((1, 2, 8, 8), 3)])
def test_box_mean_equals_windowed_averages(shape, k):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(box_mean(x, (k, k)), _box_mean_reference(x, k), atol=1e-5, rtol=0)


def test_local_pooling_is_global_for_small_images_and_local_for_large_ones():
    net = random_lora_net()
    prior, logits = _prior(1), one_hot_logits([0])
    small, large = make_images(1, 32, 32), make_images(1, 64, 96, seed=3)
    with torch.no_grad():
        # base 64 px: level 0 pools 64 px windows, level 1 32, the middle (stride 4) 16 feature px
        # box mean over the whole image vs the global mean: two paths, FP32_ATOL
        torch.testing.assert_close(
            net(small, prior, logits, local_pool_px=64), net(small, prior, logits), atol=FP32_ATOL, rtol=0
        )
        local = net(large, prior, logits, local_pool_px=64)
        assert (local - net(large, prior, logits)).abs().max() > 1e-4
        # computed per call: an earlier, differently sized image changes nothing (the official pools keep the first)
        net(small, prior, logits, local_pool_px=64)
        assert torch.equal(net(large, prior, logits, local_pool_px=64), local)


def test_local_pooling_kernels_follow_each_levels_stride(monkeypatch):
    net = random_lora_net()
    kernels = []
    monkeypatch.setattr(lora_ir, "box_mean", lambda x, k: kernels.append((x.shape[-1], k)) or box_mean(x, k))
    with torch.no_grad():
        net(make_images(1, 32, 128), _prior(1), one_hot_logits([0]), local_pool_px=48)
    # widths 128 (stride 1), 64 (stride 2), 32 (stride 4, middle): kernels 48, 24, 12 feature px
    assert {w: k for w, k in kernels} == {128: (48, 48), 64: (24, 24), 32: (12, 12)}


def test_the_model_level_pooling_default_and_its_override():
    model = random_lora_ir()
    x = make_images(1, 48, 64)
    with torch.no_grad():
        routing = model.route(x)
        global_out = model.run(x, routing).output
        model.local_pool_px = 16
        local_out = model.run(x, routing).output
        assert torch.equal(model.run(x, routing, local_pool_px=0).output, global_out)
        assert torch.equal(model.run(x, routing, local_pool_px=16).output, local_out)
    assert not torch.equal(global_out, local_out)


# --------------------------------------------------------------------------------------------------------------------
# The pair, its routing object and classification


def test_run_routes_restores_and_names_classes():
    model = random_lora_ir()
    x = make_images(4, 24, 32)
    with torch.no_grad():
        result = model.run(x)
        routing = model.route(x)
    assert result.output.shape == x.shape
    torch.testing.assert_close(result.routing.logits, routing.logits, atol=1e-6, rtol=0)
    named = model.classify(result.routing)
    probs = result.routing.logits.softmax(-1)
    assert [n for n, _ in named] == [model.classes[int(i)] for i in probs.argmax(-1)]
    assert [p for _, p in named] == pytest.approx(probs.max(-1).values.tolist())
    assert model.size_multiple == 4 and model.arch == "lora_ir" and model.classes == ("snow", "rain", "raindrop")
    torch.testing.assert_close(model(x), result.output, atol=1e-6, rtol=0)


def test_the_router_batches_its_views_in_one_tower_call():
    model = random_lora_ir()
    calls = []
    model.router.clip_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        model.route(make_images(3, 20, 20))
    assert calls == [15]  # 3 images x 5 views


def test_routing_subsets_moves_concatenates_and_can_be_imposed():
    model = random_lora_ir()
    x = make_images(4, 16, 24)
    with torch.no_grad():
        routing = model.route(x)
        whole = model.run(x, routing).output
        for index in (2, slice(1, 3), torch.tensor([3, 0]), [1, 1]):
            part = routing[index]
            rows = x[[index] if isinstance(index, int) else index]
            assert len(part) == rows.shape[0] and part.prior.shape[0] == rows.shape[0]
            expected = whole[[index] if isinstance(index, int) else index]
            torch.testing.assert_close(model.run(rows, part).output, expected, atol=1e-5, rtol=0)
        joined = LoRARouting.cat([routing[:1], routing[1:]])
        assert torch.equal(joined.logits, routing.logits) and torch.equal(joined.prior, routing.prior)
        moved = routing.to("cpu")
        assert moved.logits.device.type == "cpu" and moved.top_k == routing.top_k
        # one image's routing on many tiles: every tile runs with it
        tiles = x[:, :, :8, :8]
        torch.testing.assert_close(
            model.run(tiles, routing[0]).output, model.run(tiles, routing[[0, 0, 0, 0]]).output, atol=FP32_ATOL, rtol=0
        )  # broadcast vs per-image merge: FP32_ATOL
        with pytest.raises(ValueError, match="routing is for 2 images but the batch has 4"):
            model.run(x, routing[:2])


def test_the_routing_gate_is_the_official_top1_mask():
    routing = LoRARouting(torch.tensor([[0.1, 1.6, 2.0], [3.0, -1.0, 0.0]]), torch.zeros(2, 4))
    assert routing.experts.tolist() == [[2], [0]]
    assert routing.gates.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    torch.testing.assert_close(routing.probabilities.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="must share B"):
        LoRARouting(torch.zeros(2, 3), torch.zeros(3, 4))


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing and precision


def test_views_are_pil_bicubic_resizes_and_row_major_tiles():
    from PIL import Image

    x = make_images(2, 37, 53)
    views = router_views_uint8(x, size=28, tiles=2)
    assert views.shape == (2, 5, 28, 28, 3) and views.dtype == torch.uint8
    for b in range(2):
        picture = Image.fromarray(to_uint8(x[b]).permute(1, 2, 0).numpy())
        small = torch.from_numpy(np.array(picture.resize((28, 28), Image.Resampling.BICUBIC)))
        big = torch.from_numpy(np.array(picture.resize((56, 56), Image.Resampling.BICUBIC)))
        assert torch.equal(views[b, 0], small)
        assert torch.equal(views[b, 2], big[:28, 28:])  # row 0, column 1
        assert torch.equal(views[b, 3], big[28:, :28])  # row 1, column 0


def test_float_inputs_are_rounded_to_8_bit_levels_first():
    levels = torch.arange(256, dtype=torch.uint8)
    exact = levels.float() / 255
    assert torch.equal(to_uint8(exact), levels)  # 8-bit images: the official truncation gives the same levels
    assert torch.equal(to_uint8(exact + 0.4 / 255).clamp(max=255), levels)  # others: nearest level
    assert to_uint8(torch.tensor([float("nan"), -0.2, 1.7])).tolist() == [0, 0, 255]


def test_a_bf16_router_stays_close_to_fp32_and_returns_fp32():
    router = random_router()
    x = make_images(2, 30, 30)
    with torch.no_grad():
        logits, prior = router.route(x)
        router.to(torch.bfloat16)
        logits16, prior16 = router.route(x)
    assert logits16.dtype == prior16.dtype == torch.float32
    assert (logits16 - logits).abs().max() < 0.1 * logits.abs().max()
    assert torch.equal(logits16.argmax(-1), logits.argmax(-1))


def test_views_of_the_wrong_shape_are_refused():
    router = random_router()
    with pytest.raises(ValueError, match=r"expects \(B, 5, C, S, S\) views"):
        router(torch.zeros(1, 4, 3, 28, 28))
    with pytest.raises(ValueError, match="tokens"):
        router(torch.zeros(1, 5, 3, 42, 42))


def test_pair_rejects_mismatched_halves():
    with pytest.raises(ValueError, match="classes but the network"):
        LoRAIR(random_lora_net(), CLIPRouter(CLIPRouterConfig(**{**MICRO_ROUTER.to_dict(), "classes": ["a", "b"]})))
