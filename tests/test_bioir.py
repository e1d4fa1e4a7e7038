"""BioIR: equality with the official network (github.com/c-yn/BioIR at ff61e47, golden data made by
tests/data/make_bioir_golden.py), its variants, detection against every registered architecture, checkpoint layouts,
and restore / eval / inspect through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import irtool
from irtool.archs import ARCHS, SPECS, bioir
from irtool.archs.bioir import VARIANTS, BioIR, BioIRConfig
from irtool.cli import app
from irtool.errors import CheckpointError

ATOL = 1e-5  # fp32 outputs against the official network's
OFFICIAL_COMMIT = "ff61e477ecf64db2731ef080a1e586f3f9d4248d"
DATA = Path(__file__).with_name("data")
runner = CliRunner()


def _maker():
    """tests/data/make_bioir_golden.py as a module (only its weight recipe is used here: it needs no einops)."""
    spec = importlib.util.spec_from_file_location("make_bioir_golden", DATA / "make_bioir_golden.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(DATA / "bioir_golden.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def official_keys(golden):
    _, meta = golden
    return {name: {k: tuple(v) for k, v in json.loads(meta[f"{name}.keys"]).items()} for name in ("BioIR", "tiny")}


def _perturbed(name: str, official_keys) -> BioIR:
    model = BioIR(VARIANTS[name]).eval()
    model.load_state_dict(_maker().perturbed_state_dict(official_keys[name]), strict=True)
    return model


def random_bioir(name: str = "tiny", seed: int = 0) -> BioIR:
    torch.manual_seed(seed)
    model = BioIR(VARIANTS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_golden_data_comes_from_the_pinned_official_commit(golden):
    _, meta = golden
    assert meta["official_commit"] == OFFICIAL_COMMIT == _maker().OFFICIAL_COMMIT
    assert json.loads(meta["BioIR.kwargs"]) == {}  # the released all-in-one network: the official defaults


@pytest.mark.parametrize("name", ["BioIR", "tiny"])
def test_state_dict_keys_and_shapes_equal_the_official_networks(name, official_keys):
    ours = {k: tuple(v.shape) for k, v in BioIR(VARIANTS[name]).state_dict().items()}
    assert ours == official_keys[name]


@pytest.mark.parametrize("name", ["BioIR", "tiny"])
@pytest.mark.parametrize("size", ["45x71", "37x53"])
def test_outputs_equal_the_official_network_on_odd_sizes(name, size, golden, official_keys):
    tensors, _ = golden
    model = _perturbed(name, official_keys)
    x, expected = tensors[f"{name}.{size}.input"], tensors[f"{name}.{size}.output"]
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape  # any H x W in, the same H x W out
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert (expected - x).abs().mean() > 0.03  # the network's own contribution is what is being compared


def test_perturbed_weights_sit_at_no_initial_value(official_keys):
    fresh = BioIR(VARIANTS["tiny"]).state_dict()
    weights = _maker().perturbed_state_dict(official_keys["tiny"])
    for key, value in weights.items():
        assert not torch.equal(value, fresh[key]), key


def test_named_variants_build_with_the_official_sizes():
    counts = {name: sum(p.numel() for p in BioIR(cfg).parameters()) for name, cfg in VARIANTS.items()}
    assert counts["BioIR"] == 15_847_328  # "~15.9M" in the paper's comparison
    assert counts["tiny"] < counts["BioIR_small"] < counts["BioIR_base"] < counts["BioIR"]
    assert irtool.archs.build("bioir", "BioIR").config == BioIRConfig()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_is_read_back_from_the_tensors(name):
    with torch.device("meta"):
        sd = BioIR(VARIANTS[name]).state_dict()
    assert bioir.detect(sd) and bioir.infer_config(sd) == VARIANTS[name]


def _meta_state_dicts():
    for spec in SPECS:
        for variant, config in spec.variants.items():
            with torch.device("meta"):
                yield spec.name, variant, spec.build(config).state_dict()


def test_detection_claims_bioir_only_and_nothing_else_claims_it():
    for arch, variant, sd in _meta_state_dicts():
        claimed_by = [s.name for s in SPECS if s.detect(sd)]
        if arch == "bioir":
            assert claimed_by == ["bioir"], variant
        else:
            assert "bioir" not in claimed_by, (arch, variant)


def test_a_state_dict_with_unequal_decoder_depths_is_refused():
    with torch.device("meta"):
        sd = BioIR(VARIANTS["tiny"]).state_dict()
    extra = {k.replace("decoder_level3.1.", "decoder_level3.2."): v for k, v in sd.items() if "decoder_level3.1." in k}
    with pytest.raises(ValueError, match="decoder levels"):
        bioir.infer_config({**sd, **extra})


def test_run_takes_multiples_of_four_of_at_least_twelve_and_no_routing():
    model = random_bioir()
    with pytest.raises(ValueError, match="multiple of 4"):
        model.run(torch.rand(1, 3, 45, 72))
    with pytest.raises(ValueError, match="at least 12"):
        model.run(torch.rand(1, 3, 8, 32))
    with pytest.raises(ValueError, match="does not route"):
        model.run(torch.rand(1, 3, 16, 16), routing=object())  # type: ignore[arg-type]
    result = model.run(torch.rand(2, 3, 16, 20))
    assert result.output.shape == (2, 3, 16, 20) and result.routing is None


def test_a_batch_gives_each_image_its_own_result():
    model = random_bioir()
    x = torch.rand(2, 3, 24, 28)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_bf16_autocast_stays_close_to_fp32():
    model = random_bioir()
    x = torch.rand(1, 3, 32, 36)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
    assert (bf16 - fp32).abs().max() < 0.1 and (bf16 - fp32).abs().mean() < 0.01


def _layouts(model: BioIR, folder: Path) -> dict[str, Path]:
    sd = model.state_dict()
    files = {
        "lightning": folder / "BioIR5D.ckpt",
        "plain": folder / "plain.pth",
        "wrapped": folder / "wrapped.pth",
        "safetensors": folder / "tiny.safetensors",
    }
    # what the official training writes: Lightning's checkpoint of `BioIRModel`, whose network is `self.net`
    torch.save(
        {
            "epoch": 179,
            "global_step": 1,
            "pytorch-lightning_version": "2.0.1",
            "state_dict": {f"net.{k}": v for k, v in sd.items()},
        },
        files["lightning"],
    )
    torch.save(sd, files["plain"])
    torch.save({"params": sd}, files["wrapped"])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(files["safetensors"]))
    return files


def test_lightning_plain_wrapped_and_safetensors_layouts_load_strictly(tmp_path):
    model = random_bioir(seed=3)
    x = torch.rand(1, 3, 45, 71)
    with torch.no_grad():
        expected = model(x)
    for layout, path in _layouts(model, tmp_path).items():
        loaded = irtool.load_model(path, device="cpu")
        assert isinstance(loaded, BioIR) and loaded.config == VARIANTS["tiny"], layout
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, atol=1e-6, rtol=0)


def test_a_pickled_whole_model_is_refused_without_trust_and_loads_with_it(tmp_path):
    model = random_bioir(seed=4)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        expected = model(x)
    for name, obj in (("whole.pth", model), ("keyed.pth", {"BioIR": model, "epoch": 3})):  # alone, or under a key
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError) as err:
            irtool.load_model(path, device="cpu")
        assert "\n" not in str(err.value) and name in str(err.value) and "--trust-checkpoint" in str(err.value)
        loaded = irtool.load_model(path, device="cpu", trust=True)  # its weights, into irtool's own BioIR
        assert type(loaded) is BioIR and loaded is not model
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, atol=1e-6, rtol=0)


def _png(path: Path, h: int, w: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_cli_restores_a_folder_inspects_and_evaluates(tmp_path):
    weights = _layouts(random_bioir(seed=5), tmp_path)["safetensors"]
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "a.png", 45, 71, 0)
    _png(photos / "b.png", 37, 53, 1)
    out = tmp_path / "out"
    result = runner.invoke(app, ["restore", str(photos), str(out), "--weights", str(weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name, size in (("a.png", (71, 45)), ("b.png", (53, 37))):
        assert Image.open(out / name).size == size
    tiled = tmp_path / "tiled"
    result = runner.invoke(
        app,
        ["restore", str(photos / "a.png"), str(tiled), "--weights", str(weights), "--device", "cpu", "--tile", "32"],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tiled / "a.png").size == (71, 45)

    info = runner.invoke(app, ["inspect", str(weights), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["arch"] == "bioir" and described["variant"] == "tiny" and described["moce_layers"] == []

    report = runner.invoke(
        app, ["eval", "--dataset", "synthetic:noise25", "--weights", str(weights), "--limit", "1", "--json", "-q"]
    )
    assert report.exit_code == 0, report.output
    scored = json.loads(report.stdout)
    (dataset,) = scored["datasets"]
    assert dataset["dataset"] == "synthetic:noise25" and dataset["protocol"] == "moce"
    assert dataset["summary"]["n"] == 1 and dataset["summary"]["failed"] == 0 and dataset["usage"] is None
    assert 0 < dataset["summary"]["psnr"] < 100


def test_the_manifest_names_the_released_checkpoints():
    from irtool.weights import catalogue

    entries = catalogue.load_manifest()["models"]
    for name, setting, filename in (("bioir.aio5", "AIO5", "BioIR5D.ckpt"), ("bioir.aio3", "AIO3", "BioIR3D.ckpt")):
        entry = entries[name]
        assert entry["arch"] == "bioir" and entry["variant"] == "BioIR" and entry["setting"] == setting
        assert entry["files"][0]["filename"] == filename and entry["source"]["repo"] == "https://github.com/c-yn/BioIR"
    assert ARCHS["bioir"].variants[entries["bioir.aio5"]["variant"]] == BioIRConfig()


def test_eval_report_compares_bioir_with_moce_ir(tmp_path):
    from helpers import random_moce

    from irtool.archs.moce_ir import VARIANTS as MOCE_VARIANTS

    bioir_file = _layouts(random_bioir(seed=6), tmp_path)["safetensors"]
    moce_file = tmp_path / "moce_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in random_moce(MOCE_VARIANTS["tiny"]).state_dict().items()}, str(moce_file))
    page = tmp_path / "report.html"
    args = ["eval", "--dataset", "synthetic:noise25", "--limit", "1", "-q", "--report", str(page)]
    result = runner.invoke(app, [*args, "--weights", str(bioir_file), "--weights", str(moce_file)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert f"{bioir_file.name} · {moce_file.name}" in html  # both models, side by side
