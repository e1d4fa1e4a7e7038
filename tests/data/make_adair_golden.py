"""Make AdaIR's golden data with the official network: `python tests/data/make_adair_golden.py [--repo PATH]`.

PATH is a clone (or bare mirror) of github.com/c-yn/AdaIR; its `net/model.py` at the pinned commit is extracted to a
temporary folder and imported as it is (it needs einops: install it for this script only; the tests do not). On the
CPU, in fp32, for the released config and the tiny one, the official network gets the recipe weights of
tests/helpers_adair.py (every parameter moved off its initial value; checked) and runs on:
- odd-sized images (45x71, 37x53), reflect-padded at the bottom and right to a multiple of 8 and cropped back (the
  official network has no padding of its own; this is the padding irtool applies);
- tiny only: a 528x536 image, the smallest size at which an AFLB's low band is not empty (at fre3, 264x268 px), so
  the Fourier split itself is compared; its output is stored every 4th pixel, its input is rebuilt by the test.
Writes tests/data/adair_tiny.safetensors (the tiny config's weights, official keys) and
tests/data/adair_golden.safetensors (inputs, outputs, and in its metadata the commit and the cases), and prints how
far irtool's port is from the official outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the recipe
sys.path.insert(0, str(HERE.parents[1]))  # the repository: irtool, for the comparison printed at the end

from helpers_adair import GOLDEN_SEED, OFFICIAL_COMMIT, golden_image, recipe_weights  # noqa: E402

from irtool.archs.adair import VARIANTS, AdaIR  # noqa: E402

#: (name, height, width, image seed); the large case runs on the tiny config only
SMALL_CASES = [("odd45x71", 45, 71, 1), ("odd37x53", 37, 53, 2)]
BANDS_CASE = ("bands528x536", 528, 536, 3)
STRIDE = 4  # the large case's output is stored every STRIDE-th pixel


def official_module(repo: Path, folder: Path):
    source = subprocess.run(
        ["git", "-C", str(repo), "show", f"{OFFICIAL_COMMIT}:net/model.py"], capture_output=True, text=True, check=True
    ).stdout
    path = folder / "adair_official_model.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("adair_official_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_network(module, name: str):
    c = VARIANTS[name]
    kwargs = {
        "inp_channels": c.in_channels,
        "out_channels": c.out_channels,
        "dim": c.dim,
        "num_blocks": list(c.num_blocks),
        "num_refinement_blocks": c.num_refinement_blocks,
        "heads": list(c.heads),
        "ffn_expansion_factor": c.ffn_expansion_factor,
        "bias": c.bias,
        "LayerNorm_type": c.layernorm_type,
        "decoder": True,
    }
    torch.manual_seed(0)
    net = module.AdaIR(**kwargs).eval()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    weights = recipe_weights({k: v.shape for k, v in initial.items()}, GOLDEN_SEED)
    net.load_state_dict(weights, strict=True)
    at_init = [k for k, v in net.state_dict().items() if bool((v == initial[k]).any())]
    assert not at_init, f"{name}: recipe left values at their initial values in {at_init[:5]}"
    return net, weights, kwargs


def padded_forward(net, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect")
    with torch.no_grad():
        return net(padded)[..., :h, :w].contiguous()


def band_sides(net, x: torch.Tensor) -> dict[str, list[list[int]]]:
    """The official low-band half-sides per AFLB for `x` (padded), from hooks on its `fft`."""
    seen: dict[str, list[list[int]]] = {}
    for name in ("fre1", "fre2", "fre3"):
        block = getattr(net, name)
        original = block.fft

        def spy(feat, n=128, block=block, name=name, original=original):
            emb = block.conv1(feat)
            rates = block.rate_conv(F.adaptive_avg_pool2d(emb, 1)).sigmoid()
            h, w = emb.shape[-2:]
            seen[name] = [[int(h // n * r[0]), int(w // n * r[1])] for r in rates[:, :, 0, 0].tolist()]
            return original(feat, n)

        block.fft = spy
    padded_forward(net, x)
    for name in ("fre1", "fre2", "fre3"):
        del getattr(net, name).fft
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("/work/.mirror/c-yn+AdaIR/repo"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        module = official_module(args.repo, Path(folder))
        for name in ("AdaIR", "tiny"):
            net, weights, kwargs = official_network(module, name)
            ours = AdaIR(VARIANTS[name]).eval()
            ours.load_state_dict(weights, strict=True)
            if name == "tiny":
                from safetensors.torch import save_file

                save_file(weights, str(HERE / "adair_tiny.safetensors"), {"recipe_seed": str(GOLDEN_SEED)})
            plan = SMALL_CASES + ([BANDS_CASE] if name == "tiny" else [])
            for case, h, w, seed in plan:
                x = golden_image(h, w, seed)
                out = padded_forward(net, x)
                sides = band_sides(net, x)
                key = f"{name}.{case}"
                if case == BANDS_CASE[0]:
                    assert any(a and b for a, b in sides["fre3"]), f"{key}: fre3's low band is empty: {sides}"
                    tensors[f"{key}.input_strided"] = x[..., ::STRIDE, ::STRIDE].contiguous()
                    tensors[f"{key}.output_strided"] = out[..., ::STRIDE, ::STRIDE].contiguous()
                else:
                    tensors[f"{key}.input"] = x
                    tensors[f"{key}.output"] = out
                cases[key] = {"config": name, "official_kwargs": kwargs, "height": h, "width": w, "image_seed": seed,
                              "band_half_sides": sides}  # fmt: skip
                with torch.no_grad():
                    fast, reference = ours(x), F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect")
                    reference = ours.run(reference, reference=True).output[..., :h, :w]
                print(f"{key}: {h}x{w}, low bands {sides}; max |irtool - official|: fast "
                      f"{(fast - out).abs().max().item():.2e}, reference {(reference - out).abs().max().item():.2e}")  # fmt: skip
    from safetensors.torch import save_file

    metadata = {
        "official_repo": "https://github.com/c-yn/AdaIR",
        "official_commit": OFFICIAL_COMMIT,
        "official_file": "net/model.py",
        "recipe_seed": str(GOLDEN_SEED),
        "stride": str(STRIDE),
        "torch": torch.__version__,
        "cases": json.dumps(cases),
    }
    save_file(tensors, str(HERE / "adair_golden.safetensors"), metadata)


if __name__ == "__main__":
    main()
