"""MoCE-IR against golden data produced by the official code (../shared/reference/moce-ir)."""

from __future__ import annotations

import json

import pytest
import torch

import irtool
from irtool.archs.moce_ir import VARIANTS, MoCEIR, MoCEIRConfig
from irtool.loading import build_model

ATOL = 1e-5  # outputs, logits, gates, frequency embedding (the reference README's suggestion for fp32)
ATOL_INTERMEDIATE = 1e-4  # per-layer intermediates, values up to about 1


@pytest.fixture(scope="module")
def golden(reference):
    from safetensors import safe_open

    path = reference / "moce-ir" / "golden_tiny_io.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, meta


@pytest.fixture(scope="module")
def model(reference):
    return irtool.load_model(reference / "moce-ir" / "golden_tiny.ckpt", device="cpu")


def _cases(tensors):
    return sorted({k.split(".")[0] for k in tensors})


def test_golden_checkpoint_loads_strictly_with_the_tiny_config(model, reference):
    expected = MoCEIRConfig.from_official_kwargs(
        json.loads((reference / "moce-ir" / "configs.json").read_text())["tiny"]
    )
    assert model.config == expected == VARIANTS["tiny"]
    assert sum(p.numel() for p in model.parameters()) == 1_283_176


def test_outputs_routing_and_embeddings_match_the_official_network(model, golden):
    tensors, meta = golden
    assert json.loads(meta["moce_layers"]) == model.moce_layer_names
    freq = {}
    model.freq_embed.register_forward_hook(lambda m, i, o: freq.__setitem__("emb", o))
    for case in _cases(tensors):
        x = tensors[f"{case}.input"]
        for n in range(x.shape[0]):  # the reference ran each image alone
            with torch.no_grad():
                result = model.run(x[n : n + 1])
            torch.testing.assert_close(result.output, tensors[f"{case}.output"][n : n + 1], atol=ATOL, rtol=0)
            torch.testing.assert_close(freq["emb"], tensors[f"{case}.freq_emb"][n : n + 1], atol=ATOL, rtol=0)
            torch.testing.assert_close(result.routing.logits[0], tensors[f"{case}.router_logits"][n], atol=ATOL, rtol=0)
            assert result.routing.experts[0, :, 0].tolist() == tensors[f"{case}.expert_idx"][n].tolist()
            torch.testing.assert_close(result.routing.gates[0, :, 0], tensors[f"{case}.gate"][n], atol=ATOL, rtol=0)


def test_expert_and_moce_layer_intermediates_match(model, golden):
    """The expert path reaches the output only weakly, so its numerics are checked where they are O(1)."""
    tensors, _ = golden
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for layer_index, layer in enumerate(model.moce_layers):
        hooks.append(layer.register_forward_hook(lambda m, i, o, l=layer_index: captured.__setitem__(f"adapter{l}", o)))
        for e in range(len(layer.experts)):
            body = layer.expert(e).body
            hooks.append(body.register_forward_hook(lambda m, i, o, l=layer_index: captured.__setitem__(f"body{l}", o)))
    try:
        x = tensors["64x64.input"]
        for n in range(x.shape[0]):
            captured.clear()
            with torch.no_grad():
                model.run(x[n : n + 1])
            for layer_index in range(len(model.moce_layers)):
                prefix = f"64x64.sample{n}.layer{layer_index}"
                torch.testing.assert_close(
                    captured[f"adapter{layer_index}"], tensors[f"{prefix}.adapter_out"], atol=ATOL_INTERMEDIATE, rtol=0
                )
                torch.testing.assert_close(
                    captured[f"body{layer_index}"], tensors[f"{prefix}.expert_body_out"], atol=ATOL_INTERMEDIATE, rtol=0
                )
    finally:
        for h in hooks:
            h.remove()


def test_a_batch_gets_each_images_own_experts(model, golden):
    """The two 64x64 samples choose different experts in layer 0; batched, each must still equal its own result."""
    tensors, _ = golden
    x = tensors["64x64.input"]
    assert tensors["64x64.expert_idx"][0, 0] != tensors["64x64.expert_idx"][1, 0]
    with torch.no_grad():
        result = model.run(x)
    assert result.routing.experts[:, :, 0].tolist() == tensors["64x64.expert_idx"].tolist()
    # batch-size-dependent conv kernels move results by ~1e-7; the official batched eval is off by far more
    torch.testing.assert_close(result.output, tensors["64x64.output"], atol=ATOL, rtol=0)
    torch.testing.assert_close(result.routing.gates[:, :, 0], tensors["64x64.gate"], atol=ATOL, rtol=0)


def test_dense_experts_give_the_same_result(model, golden):
    tensors, _ = golden
    x = tensors["64x64.input"]
    with torch.no_grad():
        sparse = model.run(x)
        dense = model.run(x, dense=True)
    assert torch.equal(sparse.routing.experts, dense.routing.experts)
    torch.testing.assert_close(dense.output, sparse.output, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["MoCE_IR", "MoCE_IR_S"])
def test_released_key_lists_load_strictly_into_the_named_configs(reference, variant):
    rows = [
        line.rstrip("\n").split("\t")
        for line in (reference / "moce-ir" / f"state_dict_{variant}.tsv").read_text().splitlines(keepends=True)
        if not line.startswith("#")
    ]
    shapes = {key: tuple(int(s) for s in shape.strip("()").split(",") if s.strip()) for key, shape, _ in rows}
    assert len(shapes) == 1262
    # a Lightning-style state dict with the official key list, as `last.ckpt` holds it
    sd = {key: torch.rand(shape) for key, shape in shapes.items()}
    for key in sd:
        if key.endswith("routing.complexity"):  # released: expert sizes divided by the largest
            sd[key] = torch.tensor([0.07, 0.16, 0.38, 1.0])
    model = build_model(sd)
    assert model.config == VARIANTS[variant]
    assert list(model.state_dict()) == list(shapes)  # same keys, same order
    fresh = MoCEIR(VARIANTS[variant])
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == shapes
