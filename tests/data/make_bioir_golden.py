"""Make tests/data/bioir_golden.safetensors: outputs of the OFFICIAL BioIR network for tests/test_bioir.py.

    pip install einops   # the official model file's only extra import; the test does not need it
    python tests/data/make_bioir_golden.py [--mirror /work/.mirror/c-yn+BioIR/repo]

The official `All_in_One/net/model.py` is read from a git checkout (or bare mirror) of github.com/c-yn/BioIR at
OFFICIAL_COMMIT, written to a temporary folder and imported from there. For each config (the released `BioIR` and
irtool's `tiny`) the official network is built with the official constructor arguments and loaded with weights that
`perturbed_state_dict` draws from the key names alone (so the test regenerates them without storing 64 MB; no
parameter is left at its initial value), then run on CPU in fp32 on odd-sized inputs. Odd sizes go through the
official demo's `pad_input` (reflect-pad at the bottom/right to a multiple of 4, run, crop back), re-typed here
because demo.py imports Lightning.

Stored per config: the inputs, the outputs, and (metadata) the official state dict's keys and shapes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

OFFICIAL_REPO = "https://github.com/c-yn/BioIR"
OFFICIAL_COMMIT = "ff61e477ecf64db2731ef080a1e586f3f9d4248d"
MODEL_PATH = "All_in_One/net/model.py"
OUT = Path(__file__).with_name("bioir_golden.safetensors")

#: official constructor arguments per config (irtool's variant of the same name must equal them)
CONFIGS: dict[str, dict[str, object]] = {
    "BioIR": {},  # the released all-in-one defaults: dim 48, num_blocks [6, 6, 14], 4 refinement, ffn 3
    "tiny": {"dim": 8, "num_blocks": [1, 1, 2], "num_refinement_blocks": 1, "ffn_expansion_factor": 2.0},
}
SIZES = ((45, 71), (37, 53))  # (H, W), neither a multiple of 4


def perturbed_state_dict(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Weights for the given keys, drawn from a seed per key name (the same on every machine and in any order):
    convs ~ N(0, (0.5 / sqrt(fan_in))^2), norm weights 1 + N(0, 0.1^2), biases N(0, 0.05^2)."""
    out = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
        if len(shape) > 1:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            value = noise * (0.5 / fan_in**0.5)
        elif key.endswith("norm1.body.weight") or key.endswith("norm2.body.weight"):
            value = 1 + 0.1 * noise
        else:
            value = 0.05 * noise
        out[key] = value.float()
    return out


def pad_input(x: torch.Tensor, multiple: int = 4) -> torch.Tensor:
    """The official demo's padding: reflect at the bottom and right up to the next multiple."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="reflect")


def official_module(mirror: Path, folder: Path) -> object:
    source = subprocess.run(
        ["git", "-C", str(mirror), "show", f"{OFFICIAL_COMMIT}:{MODEL_PATH}"], check=True, capture_output=True
    ).stdout
    path = folder / "bioir_official_model.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("bioir_official_model", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=Path("/work/.mirror/c-yn+BioIR/repo"))
    args = parser.parse_args()
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"official_repo": OFFICIAL_REPO, "official_commit": OFFICIAL_COMMIT, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        official = official_module(args.mirror, Path(tmp))
        for name, kwargs in CONFIGS.items():
            net = official.BioIR(**kwargs).eval()  # type: ignore[attr-defined]
            shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            net.load_state_dict(perturbed_state_dict(shapes), strict=True)
            metadata[f"{name}.keys"] = json.dumps(shapes)
            metadata[f"{name}.kwargs"] = json.dumps(kwargs)
            torch.manual_seed(0)
            for h, w in SIZES:
                x = torch.rand(1, 3, h, w)
                with torch.no_grad():
                    y = net(pad_input(x))[..., :h, :w]
                tensors[f"{name}.{h}x{w}.input"] = x.contiguous()
                tensors[f"{name}.{h}x{w}.output"] = y.contiguous()
                print(f"{name} {h}x{w}: output mean {y.mean():.4f} std {y.std():.4f}", file=sys.stderr)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
