"""The architecture contract, over the registry (timm / spandrel style): every registered architecture, every named
variant and a few odd configs go build -> state_dict -> detect -> inferred config equals -> strict load into a fresh
build -> same output on a small input; and adding an architecture is one file with its `SPEC` plus a registry line.

Released variants whose networks are large (LoRA-IR Setting I with its 300M-parameter CLIP router) are checked on the
meta device (shapes only, nothing allocated); outputs are compared where the networks are small enough for a CPU in
a fraction of a second. Outputs of the loaded copy must be bit-identical: same code, same weights, same input.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import FP32_ATOL, ODD, make_images
from helpers_lora import MICRO_NET, MICRO_ROUTER

import irtool
from irtool.archs import ARCHS, SPECS, ArchSpec, spec_of
from irtool.archs.moce_ir import MoCEIRConfig
from irtool.restoration.tiling import run_padded

#: named variants too large to run on a CPU in a unit test: checked on the meta device only
META_ONLY = {("lora_ir", "setting1"), ("clip_router", "setting1")}

#: configs no release has, per architecture (with the companion's config for two-file models)
ODD_CONFIGS = {
    "moce_ir": [
        ("odd", ODD),
        ("two-level", MoCEIRConfig(dim=8, num_blocks=(1, 1), num_dec_blocks=(1,), heads=(1, 2), num_experts=2)),
    ],
    "lora_ir": [("micro", MICRO_NET), ("micro-rank3", replace(MICRO_NET, rank=3))],
    "clip_router": [("micro", MICRO_ROUTER)],
}
#: the other half of a two-file model's odd configs
ODD_COMPANIONS = {
    "micro": {"lora_ir": MICRO_NET, "clip_router": MICRO_ROUTER},
    "micro-rank3": {"clip_router": MICRO_ROUTER},
}


def _cases():
    for spec in SPECS:
        for name in spec.variants:
            yield pytest.param(spec.name, name, spec.variants[name], id=f"{spec.name}-{name}")
        for name, config in ODD_CONFIGS.get(spec.name, []):
            yield pytest.param(spec.name, name, config, id=f"{spec.name}-{name}")


def _main_of(companion: ArchSpec) -> ArchSpec:
    """The architecture whose join takes `companion` as its second file."""
    return next(s for s in SPECS if s.join is not None and s.join.companion == companion.name)


def _joined(spec: ArchSpec, net: torch.nn.Module, name: str, other: torch.nn.Module | None) -> torch.nn.Module:
    """The model a user gets for `net`: itself, or joined with the other file's network `other`."""
    if spec.join is not None:
        assert other is not None
        return spec.join.join(net, other, None)
    if not spec.standalone:
        main = _main_of(spec)
        assert main.join is not None and other is not None
        return main.join.join(other, net, None)
    return net


def _other_half(spec: ArchSpec, name: str) -> torch.nn.Module | None:
    """The network of the other file of a two-file model, for variant (or odd config) `name`."""
    if spec.join is not None:
        other = ARCHS[spec.join.companion]
    elif not spec.standalone:
        other = _main_of(spec)
    else:
        return None
    config = ODD_COMPANIONS[name][other.name] if name in ODD_COMPANIONS else other.variants[name]
    torch.manual_seed(1)
    return other.build(config).eval()


def _with_unseen(spec: ArchSpec, inferred, config):
    """`inferred` with the fields the tensors cannot show (`spec.unseen_fields`) stated from `config`, as a caller
    states them to `load_model(config=...)`."""
    return replace(inferred, **{f: getattr(config, f) for f in spec.unseen_fields})


def _randomise(net: torch.nn.Module) -> None:
    """Weights that make every branch matter (plain inits leave LoRA experts and residual scales at zero)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("arch,name,config", list(_cases()))
def test_build_detect_infer_load_roundtrip(arch, name, config):
    spec = ARCHS[arch]
    with torch.device("meta"):
        built = spec.build(config)
    assert spec_of(built) is spec
    sd = built.state_dict()
    assert spec.detect(sd)
    assert [s.name for s in SPECS if s.detect(sd)] == [arch]  # no other signature matches
    inferred = spec.infer_config(sd)
    assert _with_unseen(spec, inferred, config) == config
    if config in spec.variants.values():  # a released variant's shapes: nothing needs stating
        assert inferred == config
    assert spec.config_from_dict(config.to_dict()) == config
    with torch.device("meta"):
        fresh = spec.build(inferred)
    fresh.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("arch,name,config", [c for c in _cases() if tuple(c.values[:2]) not in META_ONLY])
def test_a_strictly_loaded_copy_restores_the_same(arch, name, config):
    spec = ARCHS[arch]
    torch.manual_seed(0)
    net = spec.build(config).eval()
    _randomise(net)
    copy = spec.build(_with_unseen(spec, spec.infer_config(net.state_dict()), config)).eval()
    copy.load_state_dict(net.state_dict(), strict=True)
    other = _other_half(spec, name)
    model, loaded = _joined(spec, net, name, other), _joined(spec, copy, name, other)
    caps = spec_of(model).capabilities
    x = make_images(2, 20, 28)  # no size multiple of any network: padded by run_padded
    with torch.no_grad():
        a, b = run_padded(model, x), run_padded(loaded, x)
        called = model(x)  # any size: padded by the spec's rule and cropped back, as run_padded
    assert a.output.shape == x.shape and torch.isfinite(a.output).all()
    torch.testing.assert_close(called, a.output, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(b.output, a.output, atol=0, rtol=0)
    if caps.routing is not None:
        assert torch.equal(a.routing.experts, b.routing.experts)
        assert len(a.routing) == 2 and len(a.routing.consensus()) == 1
        experts, gates = a.routing.summary()
        assert len(experts) == len(gates) == (len(caps.routing.layer_names(model)) if caps.routing.per_layer else 1)
    m = caps.size_multiple(model)
    if m > 1:  # padding belongs to the caller: the network refuses sides that are not multiples
        with pytest.raises(ValueError, match=f"not a multiple of {m} px"), torch.no_grad():
            model.run(x[..., : m + 1, :m])


def test_every_registered_spec_is_consistent():
    assert list(ARCHS) == [s.name for s in SPECS] and len(set(ARCHS)) == len(SPECS)
    for spec in SPECS:
        if spec.join is not None:
            assert spec.join.companion in ARCHS and not ARCHS[spec.join.companion].standalone
        if not spec.standalone:
            _main_of(spec)  # someone joins it
        caps = spec.capabilities
        assert set(caps.precisions) <= {"fp32", "bf16", "fp16"} and caps.padding in ("reflect", "zeros")


# --------------------------------------------------------------------------------------------------------------------
# Adding an architecture: one file with its SPEC, one registry line

TOY_ARCH = '''
"""A toy restoration network: a residual 3x3 conv, of configurable width. Only irtool's spec contract."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irtool.archs.spec import ArchSpec, Capabilities, require_multiple, run_padded


@dataclass(frozen=True)
class ToyConfig:
    width: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToyConfig:
        return cls(**d)


@dataclass
class ToyResult:
    output: Tensor
    routing: None = None


class ToyNet(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.toy_in = nn.Conv2d(3, config.width, 3, padding=1)
        self.toy_out = nn.Conv2d(config.width, 3, 3, padding=1)

    @property
    def spec(self) -> ArchSpec:
        return SPEC

    def run(self, x: Tensor, routing: None = None, *, dense: bool = False) -> ToyResult:
        require_multiple(x, 2, "Toy")
        return ToyResult(x + 0.1 * self.toy_out(F.gelu(self.toy_in(x))))

    def forward(self, x: Tensor, routing: None = None, *, dense: bool = False) -> Tensor:
        return run_padded(self, x, routing=routing, dense=dense).output


def detect(sd: Mapping[str, Tensor]) -> bool:
    return "toy_in.weight" in sd and "toy_out.weight" in sd


def infer_config(sd: Mapping[str, Tensor]) -> ToyConfig:
    return ToyConfig(width=int(sd["toy_in.weight"].shape[0]))


SPEC = ArchSpec(
    name="toy",
    title="Toy",
    detect=detect,
    infer_config=infer_config,
    config_from_dict=ToyConfig.from_dict,
    build=ToyNet,
    variants={"small": ToyConfig(4)},
    capabilities=Capabilities(size_multiple=lambda model: 2),
)
'''


@pytest.fixture
def toy_arch(tmp_path, monkeypatch):
    """The toy architecture's file, imported from tmp_path and put into the registry (the one line it needs)."""
    (tmp_path / "toy_arch.py").write_text(textwrap.dedent(TOY_ARCH))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_arch", raising=False)
    import toy_arch

    monkeypatch.setitem(ARCHS, "toy", toy_arch.SPEC)
    return toy_arch


def test_a_new_architecture_is_one_file_and_a_registry_line(toy_arch, tmp_path):
    torch.manual_seed(3)
    net = toy_arch.ToyNet(toy_arch.ToyConfig(width=6)).eval()
    checkpoint = tmp_path / "toy.pth"
    torch.save(net.state_dict(), checkpoint)

    model = irtool.load_model(checkpoint, device="cpu")
    assert spec_of(model).name == "toy" and model.config == toy_arch.ToyConfig(width=6)
    assert not any(p.requires_grad for p in model.parameters())

    image = (np.random.default_rng(0).random((37, 45, 3)) * 255).astype(np.uint8)  # odd sides: the engine pads
    [whole] = irtool.restore(image, model=str(checkpoint), device="cpu")
    [tiled] = irtool.restore(image, model=str(checkpoint), device="cpu", tile=16, tile_overlap=8)
    assert whole.report.status == tiled.report.status == "ok"
    assert whole.image.shape == image.shape and whole.report.degradation == "unknown"
    assert whole.report.experts is None and tiled.report.tiles > 1
    # the toy sees 2 px around each pixel, well within a quarter of the overlap: tiles give the whole-image result
    assert np.abs(tiled.image.astype(int) - whole.image.astype(int)).max() <= 1
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = run_padded(net, x, padding="reflect").output.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(whole.image.astype(np.float64) - np.round(expected * 255)).max() <= 1
    with torch.no_grad(), pytest.raises(ValueError, match="^Toy: input 45x37 px is not a multiple of 2 px"):
        net.run(x)
    with torch.no_grad():  # the contract's forward: any size in, the same size out (one helper call)
        assert net(x).shape == x.shape
        torch.testing.assert_close(net(x), run_padded(net, x).output, atol=0, rtol=0)
