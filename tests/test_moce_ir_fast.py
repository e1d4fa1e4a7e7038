"""MoCE-IR's fast paths (channels-last layout, fused LayerNorm, Gram-normalised attention folded into its output conv,
chained 1x1 convs) give the numbers of the plain reference formulation, in every configuration and mode."""

from __future__ import annotations

import pytest
import torch
from helpers import ODD, diverse_routing_moce, make_images, random_moce

import irtool
from irtool.archs import moce_ir
from irtool.archs.moce_ir import VARIANTS
from irtool.restoration.tiling import run_padded

ATOL = 1e-5


def _both_paths(model, x, **kwargs):
    """The fast and the reference path on x of any size (padded to the size multiple, cropped back)."""
    with torch.no_grad():
        fast = run_padded(model, x, **kwargs)
        plain = run_padded(model, x, reference=True, **kwargs)
    return fast, plain


def _assert_same(fast, plain):
    assert torch.equal(fast.routing.experts, plain.routing.experts)
    torch.testing.assert_close(fast.routing.gates, plain.routing.gates, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.output, plain.output, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_fast_path_equals_the_reference_path(name, layout):
    config = ODD if name == "odd" else VARIANTS[name]
    images = make_images(3, 40, 56)
    model = diverse_routing_moce(config, images)
    model.memory_format = getattr(torch, f"{layout}_format" if layout == "contiguous" else layout)
    fast, plain = _both_paths(model, images)
    _assert_same(fast, plain)
    assert len({tuple(e.flatten().tolist()) for e in fast.routing.experts}) > 1  # the batch really splits
    assert fast.output.is_contiguous()  # callers get plain NCHW back whatever the working layout


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (64, 24), (72, 40)])
def test_fast_path_equals_the_reference_path_at_odd_sizes(size):
    """Padding to the size multiple, expert windows that need padding (4..32 px) and small latent maps."""
    model = random_moce(VARIANTS["tiny"], seed=1)
    _assert_same(*_both_paths(model, make_images(1, *size)))


def test_dense_and_imposed_routing_on_the_fast_path():
    model = random_moce(ODD, seed=5)
    x = make_images(2, 32, 24)
    _assert_same(*_both_paths(model, x, dense=True))
    with torch.no_grad():
        own = model.run(x)
    imposed = moce_ir.Routing(own.routing.experts.flip(-1), own.routing.gates)
    _assert_same(*_both_paths(model, x, routing=imposed))


def test_golden_outputs_on_both_paths(reference):
    """The official golden outputs come out of the reference path too, not only out of the (default) fast path."""
    from safetensors.torch import load_file

    tensors = load_file(str(reference / "moce-ir" / "golden_tiny_io.safetensors"))
    model = irtool.load_model(reference / "moce-ir" / "golden_tiny.ckpt", device="cpu")
    for case in sorted({k.split(".")[0] for k in tensors}):
        x = tensors[f"{case}.input"][:1]
        fast, plain = _both_paths(model, x)
        torch.testing.assert_close(plain.output, tensors[f"{case}.output"][:1], atol=ATOL, rtol=0)
        _assert_same(fast, plain)


def test_training_gradients_match_the_reference_path():
    """The fast ops are differentiable and give the same gradients (training uses the same module code)."""
    model = random_moce(VARIANTS["tiny"], seed=4).train()
    x = make_images(2, 32, 32)
    grads = []
    for reference in (False, True):
        model.zero_grad()
        result = model.run(x, routing_noise=torch.Generator().manual_seed(3), reference=reference)
        (result.output.square().mean() + result.aux_loss).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fast, plain = grads
    assert fast.keys() == plain.keys() and len(fast) > 100
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-5, rtol=1e-3, msg=name)


def test_bf16_autocast_stays_close_to_fp32():
    """Reduced precision (autocast, as `irtool bench --precision bf16` runs it) on the golden-like tiny model."""
    model = random_moce(VARIANTS["tiny"], seed=0)
    x = make_images(1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    mse = (low.float() - ref).square().mean()
    assert 10 * torch.log10(1 / mse) > 45


def test_a_batch_sharing_its_experts_runs_them_once_and_equals_one_by_one():
    """Imposed routing that is the same for every image takes the batch-wide path (no regrouping)."""
    model = random_moce(ODD, seed=3)
    images = make_images(3, 24, 16)
    layers = len(model.moce_layers)
    experts = torch.tensor([[2, 0]]).expand(3, layers, 2).contiguous()
    gates = torch.tensor([[[0.7, 0.2]], [[0.4, 0.5]], [[0.9, 0.05]]]).expand(3, layers, 2).contiguous()
    routing = moce_ir.Routing(experts, gates)
    with torch.no_grad():
        batched = model.run(images, routing)
        for i in range(3):
            torch.testing.assert_close(
                batched.output[i : i + 1], model.run(images[i : i + 1], routing[i]).output, atol=ATOL, rtol=0
            )


def test_routing_keeps_a_host_copy_of_its_experts():
    """A routing moved to an accelerator still knows its experts on the host (no sync to choose them)."""
    experts = torch.tensor([[[1], [2]], [[3], [0]]])
    routing = moce_ir.Routing(experts, torch.rand(2, 2, 1))
    moved = routing.to("meta")  # stands in for an accelerator: its values cannot be read back
    assert moved.experts.device.type == "meta" and torch.equal(moved.host_experts, experts)
    assert torch.equal(moved[1].host_experts, experts[1:2])
    assert torch.equal(moved[torch.tensor([1, 0])].host_experts, experts[[1, 0]])
    assert torch.equal(moce_ir.Routing.cat([moved[1], moved[0]]).host_experts, experts[[1, 0]])


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_low_memory_slices_equal_the_reference_path(name, monkeypatch):
    """Large images run the widest steps in channel slices; forced on here for small ones."""
    monkeypatch.setattr(moce_ir, "LOW_MEMORY_PIXELS", 0)
    config = ODD if name == "odd" else VARIANTS[name]
    images = make_images(2, 40, 32)
    model = diverse_routing_moce(config, images)
    _assert_same(*_both_paths(model, images))
    model.train()  # the slices are differentiable too (out-of-place when recording gradients)
    out = model.run(images[:1], routing_noise=torch.Generator().manual_seed(1)).output
    out.mean().backward()
    assert model.enc[0][0].layers[0].ffn.project_in.weight.grad is not None


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_fast_path_equals_the_reference_path_at_528x536(name):
    """Large enough for the long H·W reductions of the channel attention (Gram matrix, q/k norms) to show their
    accumulation order: a single running sum over 283k pixels was 1e-4 off the reference path here."""
    config = ODD if name == "odd" else VARIANTS[name]
    model = random_moce(config, seed=0)
    _assert_same(*_both_paths(model, make_images(1, 528, 536)))


def _unpacked(model, x, **kwargs):
    """The fast path with F.conv2d everywhere (no prepacked oneDNN weights, no fused post-ops)."""
    previous, moce_ir.PACKED_CONVS = moce_ir.PACKED_CONVS, False
    try:
        with torch.no_grad():
            return run_padded(model, x, **kwargs)
    finally:
        moce_ir.PACKED_CONVS = previous


@pytest.mark.skipif(not moce_ir._MKLDNN_OPS, reason="this torch has no oneDNN convolution ops")
@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_packed_convolutions_equal_plain_ones_and_stay_out_of_autograd(name):
    config = ODD if name == "odd" else VARIANTS[name]
    model = random_moce(config, seed=2)
    x = make_images(1, 45, 61)
    moce_ir._PACKED.clear()
    with torch.inference_mode():
        packed = run_padded(model, x)
    assert len(moce_ir._PACKED) > 20  # the convs really took the packed path
    _assert_same(packed, _unpacked(model, x))
    with torch.no_grad():  # packed weights made under inference_mode serve plain no_grad calls too
        _assert_same(run_padded(model, x), packed)
    moce_ir._PACKED.clear()
    model.run(make_images(1, 32, 32)).output.sum().backward()  # recording gradients: F.conv2d only
    assert len(moce_ir._PACKED) == 0


@pytest.mark.skipif(not moce_ir._MKLDNN_OPS, reason="this torch has no oneDNN convolution ops")
def test_packed_weights_follow_load_state_dict_and_optimiser_steps():
    """The cache is keyed on each weight's identity, storage and in-place version: new values are repacked."""
    model = random_moce(VARIANTS["tiny"], seed=0)
    x = make_images(1, 32, 40)
    with torch.inference_mode():
        before = model.run(x).output

    model.load_state_dict(random_moce(VARIANTS["tiny"], seed=6).state_dict())
    with torch.inference_mode():
        loaded = model.run(x)
    assert (loaded.output - before).abs().max() > 1e-2
    _assert_same(loaded, _unpacked(model, x))

    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.run(x).output.square().mean().backward()
    optimiser.step()
    model.eval()
    with torch.inference_mode():
        stepped = model.run(x)
    assert (stepped.output - loaded.output).abs().max() > 1e-3
    _assert_same(stepped, _unpacked(model, x))

    with torch.no_grad():  # a replaced parameter object, and in-place writes outside any optimiser
        conv = model.output
        conv.weight = torch.nn.Parameter(conv.weight * 2)
        model.patch_embed.proj.weight.mul_(0.5)
    with torch.inference_mode():
        edited = model.run(x)
    _assert_same(edited, _unpacked(model, x))
    assert (edited.output - stepped.output).abs().max() > 1e-3


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.float() - b.float()).square().mean()))


@pytest.mark.skipif(not moce_ir._MKLDNN_OPS, reason="this torch has no oneDNN convolution ops")
@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_cpu_bf16_autocast_runs_a_bf16_copy_on_the_packed_path(name, monkeypatch):
    """Under CPU bf16 autocast without autograd, `run` hands the batch to a bf16 copy of the network, whose convs take
    the prepacked path in bf16 (autocast would cast every conv's operands, off that path). Reduced precision, so the
    claim is closeness to fp32 (45 dB, as for autocast itself), and that every mode (dense, imposed routing, channel
    slices for large images) runs there."""
    config = ODD if name == "odd" else VARIANTS[name]
    model = random_moce(config, seed=3)
    x = make_images(2, 40, 48)
    moce_ir._BF16_COPIES.clear()
    moce_ir._PACKED.clear()
    with torch.inference_mode():
        exact = run_padded(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = run_padded(model, x)
            dense = run_padded(model, x, dense=True)
            imposed = run_padded(model, x, routing=exact.routing)
            plain_autocast = run_padded(model, x, reference=True)  # torch's own autocast, for comparison
            monkeypatch.setattr(moce_ir, "LOW_MEMORY_PIXELS", 1)
            sliced = run_padded(model, x)
    assert low.output.dtype == torch.float32  # the last conv and the image residual in fp32, as under autocast
    assert list(moce_ir._BF16_COPIES) == [model]
    copy = moce_ir._BF16_COPIES[model].network
    convs = [m for m in copy.modules() if isinstance(m, torch.nn.Conv2d)]
    packed = [w.packed.dtype for conv in convs for w in moce_ir._PACKED.get(conv, {}).values()]
    assert len(packed) > 20 and set(packed) == {torch.bfloat16}  # the copy's convs ran packed, in bf16
    for result in (low, dense, imposed, sliced, plain_autocast):
        assert _psnr(result.output, exact.output) > 45
    # about as faithful as torch's autocast, which keeps fp32 weights and an fp32 residual stream and casts every
    # conv's operands (1.5 dB further from fp32 on this random tiny network, 1.8 dB closer on the built-in model and a photo)
    assert _psnr(low.output, exact.output) > _psnr(plain_autocast.output, exact.output) - 3
    assert torch.equal(imposed.routing.experts, exact.routing.experts)


@pytest.mark.skipif(not moce_ir._MKLDNN_OPS, reason="this torch has no oneDNN convolution ops")
def test_the_bf16_copy_follows_the_weights_and_stays_out_of_autograd():
    model = random_moce(VARIANTS["tiny"], seed=0)
    x = make_images(1, 32, 40)
    moce_ir._BF16_COPIES.clear()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.run(x).output
    first = moce_ir._BF16_COPIES[model].network
    model.load_state_dict(random_moce(VARIANTS["tiny"], seed=6).state_dict())  # in place: new versions
    with torch.inference_mode():
        exact = model.run(x).output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = model.run(x).output
    assert moce_ir._BF16_COPIES[model].network is not first
    assert (after.float() - before.float()).abs().max() > 1e-2 and _psnr(after, exact) > 45
    moce_ir._BF16_COPIES.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # recording gradients: autocast as torch does it, no copy
        model.run(x).output.float().sum().backward()
    assert len(moce_ir._BF16_COPIES) == 0 and model.output.weight.grad is not None


@pytest.mark.parametrize("expert", [0, 3])
def test_expert_ffts_in_bands_of_window_rows_equal_the_reference_path(expert, monkeypatch):
    """The experts' window FFTs run a band of window rows at a time (`FFT_BAND_BYTES`); one row per band here, on a
    size with several rows of windows of every expert (4-32 px) and a padded last row."""
    monkeypatch.setattr(moce_ir, "FFT_BAND_BYTES", 1)
    model = random_moce(VARIANTS["tiny"], seed=7)
    x = make_images(1, 72, 104)
    routing = model.uniform_routing(1, expert)
    _assert_same(*_both_paths(model, x, routing=routing))
    monkeypatch.setattr(moce_ir, "LOW_MEMORY_PIXELS", 1)  # the channel-chunked path bands the same way
    _assert_same(*_both_paths(model, x, routing=routing))
