"""`model(x)` restores any H x W to H x W (padded by the spec's one rule, cropped back); `run` is the aligned path.

The built-in model, MoCE-IR's and LoRA-IR's golden networks (../shared/reference, skipped with a message when
absent) are called on odd sizes. The padded call must equal `run_padded` (the same computation, 1e-5 in fp32), and
LoRA-IR's must also reproduce the official pipeline, which zero-pads inside its network and routes the unpadded image.
"""

from __future__ import annotations

import pytest
import torch

import irtool
from irtool.archs import spec_of
from irtool.archs.spec import pad_to_multiple, require_multiple, run_padded

ATOL = 1e-5  # fp32, the same computation on two code paths


def _odd(h: int = 77, w: int = 101, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _check_any_size(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
        expected = run_padded(model, x).output
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    return out


def test_the_builtin_model_restores_101x77_to_101x77():
    model = irtool.load_model("irtool.default", device="cpu")
    x = _odd()
    out = _check_any_size(model, x)
    # really padded by the spec's rule (MoCE-IR: reflect), not e.g. cropped or resized: the aligned run of the
    # reflect-padded canvas, cropped, is the same image
    assert spec_of(model).capabilities.padding == "reflect"
    with torch.no_grad():
        manual = model.run(pad_to_multiple(x, 8, "reflect")).output[..., :77, :101]
    torch.testing.assert_close(out, manual, atol=ATOL, rtol=0)
    with torch.no_grad():  # a batch of two odd-size images, each restored as alone
        both = model(torch.cat([x, _odd(seed=1)]))
    torch.testing.assert_close(both[:1], out, atol=ATOL, rtol=0)


def test_run_refuses_a_size_that_is_not_a_multiple_with_one_line():
    model = irtool.load_model("irtool.default", device="cpu")
    with pytest.raises(ValueError) as caught, torch.no_grad():
        model.run(_odd())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("MoCE-IR: input 101x77 px is not a multiple of 8 px")
    assert "model(x)" in message


def test_require_multiple():
    require_multiple(torch.zeros(1, 3, 16, 32), 16, "net")
    with pytest.raises(ValueError, match=r"^net: input 33x16 px is not a multiple of 16 px; "):
        require_multiple(torch.zeros(1, 3, 16, 33), 16, "net")


def test_pad_to_multiple_zeros_and_an_unknown_mode():
    x = torch.rand(1, 3, 5, 6)
    padded = pad_to_multiple(x, 4, "zeros")
    assert padded.shape[-2:] == (8, 8) and padded[..., 5:, :].abs().sum() == 0 and padded[..., :, 6:].abs().sum() == 0
    torch.testing.assert_close(padded[..., :5, :6], x)
    with pytest.raises(ValueError, match="'reflect' or 'zeros'"):
        pad_to_multiple(x, 4, "mirror")


@pytest.mark.parametrize("size", [(61, 45), (33, 70)])
def test_moce_ir_golden_network_at_odd_sizes(reference, size):
    model = irtool.load_model(reference / "moce-ir" / "golden_tiny.ckpt", device="cpu")
    _check_any_size(model, _odd(*size, seed=2))
    with pytest.raises(ValueError, match="not a multiple of"), torch.no_grad():
        model.run(_odd(*size))


def test_lora_ir_golden_network_at_odd_sizes_matches_the_official_pipeline(reference):
    """The golden inputs are not multiples of LoRA-IR's 16: `model(x)` gives the official fp32 output (which the
    official network zero-pads for, routing the unpadded image) and equals run_padded."""
    from safetensors import safe_open

    folder = reference / "lora-ir"
    model = irtool.load_model(folder / "golden_tiny_ir.pth", device="cpu", router=folder / "golden_tiny_router.pth")
    assert spec_of(model).capabilities.padding == "zeros" and model.size_multiple == 16
    with safe_open(str(folder / "golden_tiny_io.safetensors"), framework="pt") as f:
        golden = {k: f.get_tensor(k) for k in f.keys() if k.endswith((".input", ".ir.output_fp32"))}
    odd = [k for k in golden if k.endswith(".input") and any(s % 16 for s in golden[k].shape[-2:])]
    assert odd, "the golden data should hold an image that is not a multiple of 16"
    for key in odd:
        x = golden[key]
        out = _check_any_size(model, x)
        torch.testing.assert_close(out, golden[key.replace(".input", ".ir.output_fp32")], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="LoRA-IR: input .* is not a multiple of 16 px"), torch.no_grad():
        model.run(golden[odd[0]])


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_tiles_from_samples_pad_by_the_given_rule_as_the_float_path_does(padding):
    """irtool.restoration.tiled_samples cuts tiles from the samples padded by the spec's rule: the same canvas as pad_to_multiple."""
    import numpy as np
    import torch.nn.functional as F

    from irtool.restoration.tiled_samples import restore_tiled
    from irtool.restoration.tiling import tiled_forward

    def blur(t: torch.Tensor) -> torch.Tensor:  # sees the canvas beyond the image at its bottom and right edges
        return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)

    rng = np.random.default_rng(0)
    samples = (rng.random((150, 230, 3)) * 65535).astype(np.uint16)
    restored, tiles, _ = restore_tiled(
        samples, False, blur, tile=64, overlap=16, multiple=16, batch=4, device=torch.device("cpu"),
        out_dtype=np.dtype(np.uint16), padding=padding,
    )  # fmt: skip
    x = torch.from_numpy(samples.astype(np.float32) / 65535).permute(2, 0, 1)[None]
    expected = {}
    for rule in ("zeros", "reflect"):
        out, grid = tiled_forward(blur, pad_to_multiple(x, 16, rule), 64, 16, 16, batch=4)
        expected[rule] = np.round(out[0, :, :150, :230].clamp(0, 1).permute(1, 2, 0).numpy() * 65535)
    assert tiles == len(grid) > 1
    other = "reflect" if padding == "zeros" else "zeros"
    assert np.abs(restored - expected[padding]).max() <= 1  # one quantization step (summation order)
    assert np.abs(restored - expected[other]).max() > 100  # and the rule shows at the edges


def test_restore_pads_lora_ir_as_the_official_code(reference):
    """The engine pads by the spec's rule too: LoRA-IR's odd-size golden image restored by irtool.restore (zeros,
    routed unpadded) gives the official fp32 output (a float image comes back float; reflect padding, the engine's
    old rule, is 0.9 off at the edges)."""
    import numpy as np
    from safetensors import safe_open

    folder = reference / "lora-ir"
    model = irtool.load_model(folder / "golden_tiny_ir.pth", device="cpu", router=folder / "golden_tiny_router.pth")
    with safe_open(str(folder / "golden_tiny_io.safetensors"), framework="pt") as f:
        golden = {k: f.get_tensor(k) for k in f.keys() if k.endswith((".input", ".ir.output_fp32"))}
    for key in [k for k in golden if k.endswith(".input") and any(s % 16 for s in golden[k].shape[-2:])]:
        image = golden[key][0].permute(1, 2, 0).numpy().astype(np.float64)
        [restored] = irtool.restore(image, model=model, device="cpu", precision="fp32")
        official = golden[key.replace(".input", ".ir.output_fp32")][0].clamp(0, 1).permute(1, 2, 0).numpy()
        assert restored.report.status == "ok" and restored.image.shape == image.shape
        assert restored.image.dtype == np.float32 and np.abs(restored.image - official).max() <= ATOL
