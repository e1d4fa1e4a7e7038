"""AdaIR against golden data made by the official code (github.com/c-yn/AdaIR, net/model.py at commit ccb8b98e49614e07
badd0641e5163fa7635c2f02, by tests/data/make_adair_golden.py), and AdaIR through irtool: detection, checkpoint
layouts, a whole pickled model, restore and eval."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_moce
from helpers_adair import GOLDEN_SEED, OFFICIAL_COMMIT, golden_image, recipe_weights
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import irtool
from irtool.archs import ARCHS, SPECS, build, spec_of
from irtool.archs.adair import VARIANTS, AdaIR, _centred_box_mask, _corner_mask
from irtool.archs.moce_ir import VARIANTS as MOCE_VARIANTS
from irtool.archs.spec import run_padded
from irtool.cli import app
from irtool.errors import UnsafeCheckpointError

DATA = Path(__file__).resolve().parent / "data"
TINY_FILE = DATA / "adair_tiny.safetensors"
ATOL = 1e-5  # fp32, against the official network's outputs


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open

    with safe_open(str(DATA / "adair_golden.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert meta["official_commit"] == OFFICIAL_COMMIT and meta["recipe_seed"] == str(GOLDEN_SEED)
    return tensors, meta


def _recipe_model(name: str) -> AdaIR:
    model = build("adair", name).eval()
    model.load_state_dict(recipe_weights({k: v.shape for k, v in model.state_dict().items()}), strict=True)
    return model


@pytest.mark.parametrize("name", ["AdaIR", "tiny"])
def test_outputs_match_the_official_network_on_odd_sizes(golden, name):
    tensors, meta = golden
    model = _recipe_model(name)
    cases = [k for k, v in json.loads(meta["cases"]).items() if v["config"] == name and "odd" in k]
    assert len(cases) == 2
    for case in cases:
        x, expected = tensors[f"{case}.input"], tensors[f"{case}.output"]
        assert x.shape[-2] % 8 and x.shape[-1] % 8  # odd sizes: padded (reflect) and cropped back
        with torch.no_grad():
            fast = model(x)
            reference = run_padded(model, x, reference=True).output
        assert fast.shape == x.shape
        torch.testing.assert_close(fast, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(reference, expected, atol=ATOL, rtol=0)


def test_the_fourier_split_matches_the_official_one_where_its_low_band_is_not_empty(golden):
    """528x536: fre3's feature map is 264x268 px, where the official low band is 1x1 bins from the centre."""
    tensors, meta = golden
    case = "tiny.bands528x536"
    info, stride = json.loads(meta["cases"])[case], int(meta["stride"])
    assert info["band_half_sides"]["fre3"] == [[1, 1]]
    x = golden_image(info["height"], info["width"], info["image_seed"])
    assert torch.equal(x[..., ::stride, ::stride], tensors[f"{case}.input_strided"])  # the same image rebuilt
    model = irtool.load_model(TINY_FILE, device="cpu")
    with torch.no_grad():
        fast = model.run(x).output[..., ::stride, ::stride]
        reference = model.run(x, reference=True).output[..., ::stride, ::stride]
    torch.testing.assert_close(fast, tensors[f"{case}.output_strided"], atol=ATOL, rtol=0)
    torch.testing.assert_close(reference, tensors[f"{case}.output_strided"], atol=ATOL, rtol=0)


def test_the_unrolled_mask_is_the_official_rolled_one():
    sides = [(0, 3), (2, 1), (5, 4), (1, 1)]
    h, w = 40, 34
    rolled = _centred_box_mask(sides, 1, h, w, torch.device("cpu"))
    unrolled = torch.roll(_corner_mask(sides, h, w, torch.device("cpu")), shifts=(h // 2, w // 2), dims=(2, 3))
    assert torch.equal(rolled, unrolled) and rolled[2].sum() == 10 * 8


def test_the_stored_tiny_weights_are_the_recipe():
    from safetensors.torch import load_file

    stored = load_file(str(TINY_FILE))
    rebuilt = recipe_weights({k: v.shape for k, v in stored.items()})
    assert stored.keys() == rebuilt.keys() and all(torch.equal(stored[k], rebuilt[k]) for k in stored)


def test_named_variants_build_and_only_adair_claims_their_weights():
    with torch.device("meta"):
        released = build("adair", "AdaIR")
    assert sum(p.numel() for p in released.parameters()) == 28_784_824  # "~28.8M" in the paper
    for name, config in VARIANTS.items():
        with torch.device("meta"):
            sd = build("adair", config).state_dict()
        assert [s.name for s in SPECS if s.detect(sd)] == ["adair"], name
        assert ARCHS["adair"].infer_config(sd) == config


def test_adair_claims_no_other_architectures_weights():
    for spec in SPECS:
        if spec.name == "adair":
            continue
        for name, config in spec.variants.items():
            with torch.device("meta"):
                sd = spec.build(config).state_dict()
            assert not ARCHS["adair"].detect(sd), f"{spec.name} {name}"


def test_tiny_restores_45x71_to_45x71_and_refuses_unaligned_sides_in_run():
    model = irtool.load_model(TINY_FILE, device="cpu")
    assert spec_of(model).name == "adair" and model.config == VARIANTS["tiny"]
    x = golden_image(45, 71, 5)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        torch.testing.assert_close(run_padded(model, x).output, y, atol=0, rtol=0)
        with pytest.raises(ValueError, match="not a multiple of 8 px"):
            model.run(x)
        with pytest.raises(ValueError, match="no routing"):
            model.run(x[..., :40, :64], routing=object())  # type: ignore[arg-type]
    image = (np.random.default_rng(0).random((45, 71, 3)) * 255).astype(np.uint8)
    [result] = irtool.restore(image, model=str(TINY_FILE), device="cpu")
    assert result.report.status == "ok" and result.image.shape == image.shape and result.report.experts is None


@pytest.mark.parametrize("layout", ["lightning", "plain", "wrapped"])
def test_checkpoint_layouts_load(tmp_path, layout):
    from safetensors.torch import load_file

    sd = load_file(str(TINY_FILE))
    content = {
        # the official Lightning module keeps the network as `net` (train.py's AdaIRModel)
        "lightning": {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 149, "global_step": 9},
        "plain": sd,
        "wrapped": {"params": sd},
    }[layout]
    path = tmp_path / f"adair_{layout}.ckpt"
    torch.save(content, path)
    model = irtool.load_model(path, device="cpu")
    assert model.config == VARIANTS["tiny"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


FOREIGN = '''
import torch
from torch import nn


class OfficialLightningModule(nn.Module):
    """Stands for a project's own class (the official AdaIRModel): importable when saved, gone when loaded."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.loss_fn = nn.L1Loss()
'''


def test_a_whole_pickled_model_is_refused_and_its_weights_taken_under_trust(tmp_path, monkeypatch):
    tiny = irtool.load_model(TINY_FILE, device="cpu")
    # 1. irtool's own class, pickled whole
    own = tmp_path / "own_module.pth"
    torch.save(tiny, own)
    with pytest.raises(UnsafeCheckpointError) as exc:
        irtool.load_model(own)
    message = str(exc.value)
    assert "\n" not in message and str(own) in message
    assert "holds a pickled model object (irtool.archs.adair.AdaIR, " in message and "--trust-checkpoint" in message
    assert torch.equal(irtool.load_model(own, trust=True).output.weight, tiny.output.weight)
    # 2. a class of a project that is not installed where the file is loaded, inside a dict (as BaryIR ships)
    (tmp_path / "foreign_project.py").write_text(textwrap.dedent(FOREIGN))
    monkeypatch.syspath_prepend(str(tmp_path))
    import foreign_project

    foreign = tmp_path / "foreign.pth"
    torch.save({"AdaIR": foreign_project.OfficialLightningModule(tiny)}, foreign)
    (tmp_path / "foreign_project.py").unlink()
    monkeypatch.delitem(sys.modules, "foreign_project")
    with pytest.raises(UnsafeCheckpointError, match=r"pickled model object \(foreign_project\.Official.*--trust"):
        irtool.load_model(foreign)
    loaded = irtool.load_model(foreign, trust=True)
    assert spec_of(loaded).name == "adair"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())


def test_restore_inspect_and_eval_from_the_command_line(tmp_path):
    runner = CliRunner()
    folder, out = tmp_path / "photos", tmp_path / "restored"
    folder.mkdir()
    for i, (h, w) in enumerate([(45, 71), (37, 53)]):
        Image.fromarray((np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    result = runner.invoke(app, ["restore", str(folder), str(out), "--weights", str(TINY_FILE), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]
    assert Image.open(out / "0.png").size == (71, 45)

    result = runner.invoke(app, ["inspect", str(TINY_FILE), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["arch"] == "adair"

    report = tmp_path / "eval.json"
    args = ["eval", "--dataset", "synthetic:noise25", "--weights", str(TINY_FILE), "--device", "cpu", "--limit", "1"]
    result = runner.invoke(app, [*args, "--json-file", str(report)])
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())
    assert scores["model"]["arch"] == "adair" and scores["datasets"][0]["images"][0]["psnr"] > 0

    # the HTML report's model comparison: AdaIR beside MoCE-IR
    moce = tmp_path / "moce_tiny.safetensors"
    save_file(random_moce(MOCE_VARIANTS["tiny"]).state_dict(), str(moce))
    page = tmp_path / "compare.html"
    result = runner.invoke(app, [*args, "--weights", str(moce), "--report", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "adair" in html and "moce_ir" in html


def test_a_restormer_shaped_state_dict_is_no_adair():
    """AdaIR without its frequency blocks is Restormer (the official `decoder=False`): nothing claims it."""
    with torch.device("meta"):
        sd = {k: v for k, v in build("adair", "tiny").state_dict().items() if not k.startswith("fre")}
    assert [s.name for s in SPECS if s.detect(sd)] == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_stays_finite_where_the_low_band_is_empty(dtype):
    """Under 512 px the AFLBs' low band is all zeros; normalising it in fp16 gave NaN (0/0) before the cross-attention
    maps were made float32. Autocast error on these weights: 0.004 fp16, 0.027 bf16 measured at 48x64."""
    model = irtool.load_model(TINY_FILE, device="cpu")
    x = golden_image(48, 64, 3)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=dtype):
            y = model(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), expected, atol=0.1, rtol=0)
