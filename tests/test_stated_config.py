"""What the tensors cannot show: a caller states it (`config=` / `router_config=`, `--config` / `--router-config`),
detection warns when it had to assume it, and an import records it.

The unreleased router here (hidden 48, 3 heads of 16) is checked against transformers' own CLIP vision tower, the
module the official LoRA-IR router wraps (`classification/clip_encoder.py`: CLIPVisionModelWithProjection, pinned
to transformers 4.37.2 as LoRA-IR pins it); its small head (Linear, GELU, Linear, GELU, Linear) is written out here
from the official `CLIPDeRouter.forward`.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FP32_ATOL, ODD, make_images, random_moce
from helpers_lora import MICRO_NET, random_lora_net
from typer.testing import CliRunner

import irtool
from irtool.cli import app
from irtool.errors import CheckpointError, ConfigGuessWarning

#: hidden 48 is under CLIP's 64 channels per head, so detection alone would build one head
HIDDEN, HEADS = 48, 3


def _official_router(seed: int = 0):
    """(state dict in the official CLIPDeRouter's key names, function views -> (logits, prior)) of a random router."""
    transformers = pytest.importorskip(
        "transformers",
        reason="the official CLIP tower comes from transformers "
        "(pip install -e '.[test]' installs transformers==4.37.2)",
    )
    config = transformers.CLIPVisionConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=96,
        image_size=28,
        patch_size=14,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    tower = transformers.CLIPVisionModelWithProjection(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # visible attention: without it one head and three give nearly the same embeddings
        for name, p in tower.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if "proj" in name else 0.1))
    d = config.projection_dim
    head = {
        "de_extractor.0.weight": torch.randn(d, 2 * d, generator=gen) * 0.15,
        "de_extractor.0.bias": torch.randn(d, generator=gen) * 0.1,
        "de_extractor.2.weight": torch.randn(d // 2, d, generator=gen) * 0.15,
        "de_extractor.2.bias": torch.randn(d // 2, generator=gen) * 0.1,
        "cls_head.weight": torch.randn(3, d // 2, generator=gen) * 1.0,
        "cls_head.bias": torch.randn(3, generator=gen) * 0.1,
    }
    sd = {f"clip_model.vision_tower.{k}": v.clone() for k, v in tower.state_dict().items()} | head

    def forward(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, v = views.shape[:2]
        with torch.no_grad():
            emb = tower(pixel_values=views.flatten(0, 1)).image_embeds.view(b, v, -1)
            y = torch.cat([emb[:, 0], emb[:, 1:].mean(dim=1)], dim=1)
            prior = F.gelu(
                F.linear(
                    F.gelu(F.linear(y, head["de_extractor.0.weight"], head["de_extractor.0.bias"])),
                    head["de_extractor.2.weight"],
                    head["de_extractor.2.bias"],
                )
            )
            return F.linear(prior, head["cls_head.weight"], head["cls_head.bias"]), prior

    return sd, forward


@pytest.fixture
def unreleased_pair(tmp_path):
    sd, official = _official_router()
    torch.save({"params": sd}, tmp_path / "router.pth")
    torch.save({"params": random_lora_net(MICRO_NET).state_dict()}, tmp_path / "ir.pth")
    return tmp_path / "ir.pth", tmp_path / "router.pth", official


def test_a_router_of_an_unreleased_config_loads_with_its_head_count_stated(unreleased_pair):
    ir, router, official = unreleased_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything the tensors cannot show is stated: nothing assumed, no warning
        model = irtool.load_model(
            ir,
            router=router,
            device="cpu",
            config={"top_k": 1, "lora_scaling": 2.0},
            router_config={"num_heads": HEADS, "hidden_act": "quick_gelu"},
        )
    assert model.router.config.num_heads == HEADS
    views = model.router.views(make_images(2, 40, 56))
    logits, prior = model.router(views)
    want_logits, want_prior = official(views)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)  # the bound for fp32 logits
    torch.testing.assert_close(prior, want_prior, atol=1e-5, rtol=0)


def test_left_to_detection_the_heads_are_assumed_with_a_warning_and_the_logits_are_off(unreleased_pair):
    ir, router, official = unreleased_pair
    with pytest.warns(
        ConfigGuessWarning,
        match=r"router\.pth: LoRA-IR CLIP router num_heads=1, hidden_act=\"quick_gelu\" assumed.*--router-config num_heads=VALUE",
    ):
        model = irtool.load_model(ir, router=router, device="cpu")
    assert model.router.config.num_heads == 1
    views = model.router.views(make_images(2, 40, 56))
    assert (model.router(views)[0] - official(views)[0]).abs().max() > 1e-3  # why the head count must be stated


def test_a_stated_field_is_checked_against_the_tensors(unreleased_pair, tmp_path):
    ir, router, _ = unreleased_pair
    with pytest.raises(CheckpointError, match=r"router\.pth: .*hidden_size 48 is not a multiple of num_heads 5"):
        irtool.load_model(ir, router=router, device="cpu", router_config={"num_heads": 5})
    with pytest.raises(
        CheckpointError, match=r"router\.pth: a LoRA-IR CLIP router config has no field heads \(its fields: hidden_size"
    ):
        irtool.load_model(ir, router=router, device="cpu", router_config={"heads": 3})
    with pytest.raises(
        CheckpointError,
        match=r"router\.pth: the stated LoRA-IR CLIP router config hidden_size=64 does not fit its tensors",
    ):
        irtool.load_model(ir, router=router, device="cpu", router_config={"hidden_size": 64})
    moce = random_moce(ODD, seed=1)
    torch.save(moce.state_dict(), tmp_path / "moce.pth")
    with pytest.raises(CheckpointError, match=r"moce\.pth: a MoCE-IR checkpoint has no router to configure"):
        irtool.load_model(tmp_path / "moce.pth", device="cpu", router_config={"num_heads": 3})


@pytest.mark.parametrize("arch", ["moce_ir", "lora_ir"])
def test_top_k_is_stated_or_assumed_with_a_warning(tmp_path, arch):
    if arch == "moce_ir":
        network = random_moce(ODD, seed=1)  # top_k = 2 leaves no trace in the tensors
        path = tmp_path / "odd.pth"
        torch.save(network.state_dict(), path)
        load = lambda **kw: irtool.load_model(path, device="cpu", **kw)  # noqa: E731
        run = lambda m, x: m(x)  # noqa: E731
    else:
        from dataclasses import replace

        from helpers_lora import MICRO_ROUTER, random_router

        from irtool.archs.lora_ir import LoRAIR

        network = LoRAIR(random_lora_net(replace(MICRO_NET, top_k=2)), random_router(MICRO_ROUTER)).eval()
        path, router = tmp_path / "ir.pth", tmp_path / "router.pth"
        torch.save(network.ir.state_dict(), path)
        torch.save(network.router.state_dict(), router)
        heads = {"num_heads": 1, "hidden_act": "quick_gelu"}  # MICRO_ROUTER's, stated so that only top_k is left
        load = lambda **kw: irtool.load_model(path, router=router, device="cpu", router_config=heads, **kw)  # noqa: E731
        run = lambda m, x: m.run(x).output  # noqa: E731
    with pytest.warns(ConfigGuessWarning, match=r"top_k=1(, lora_scaling=2\.0)? assumed .*config=\{'top_k': \.\.\."):
        assumed = load()
    assert assumed.config.top_k == 1 if arch == "moce_ir" else assumed.ir.config.top_k == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigGuessWarning)
        stated = load(config={"top_k": 2} if arch == "moce_ir" else {"top_k": 2, "lora_scaling": 2.0})
    x = make_images(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run(stated, x), run(network, x), atol=FP32_ATOL, rtol=0)  # two instances
        assert (run(assumed, x) - run(network, x)).abs().max() > 1e-4


def test_released_shapes_take_the_released_values_without_a_warning(tmp_path):
    from irtool.archs.moce_ir import VARIANTS

    torch.save(random_moce(VARIANTS["tiny"]).state_dict(), tmp_path / "tiny.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigGuessWarning)
        assert irtool.load_model(tmp_path / "tiny.pth", device="cpu").config == VARIANTS["tiny"]


def test_the_command_line_states_fields_and_an_import_records_them(unreleased_pair):
    ir, router, official = unreleased_pair
    runner = CliRunner()
    got = runner.invoke(app, ["inspect", str(router), "--router-config", "num_heads=3", "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["config"]["num_heads"] == 3
    bad = runner.invoke(app, ["inspect", str(router), "--router-config", "num_heads"])
    assert bad.exit_code == 2 and "--router-config num_heads" in bad.output and "expected FIELD=VALUE" in bad.output
    got = runner.invoke(app, ["weights", "import", str(router), "--name", "my-router", "--config", "num_heads=3"])
    assert got.exit_code == 0, got.output
    from safetensors import safe_open

    from irtool.weights import catalogue

    copy = catalogue.find_entry("my-router").local_files()["router"]
    with safe_open(str(copy), "pt") as f:
        assert json.loads(f.metadata()["irtool.config"])["num_heads"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigGuessWarning)  # recorded: nothing is assumed when it loads again
        model = irtool.load_model(ir, router=copy, device="cpu", config={"top_k": 1, "lora_scaling": 2.0})
    views = model.router.views(make_images(1, 32, 32))
    torch.testing.assert_close(model.router(views)[0], official(views)[0], atol=1e-5, rtol=0)


def test_restore_warns_once_in_one_line_and_takes_the_stated_field(tmp_path):
    from PIL import Image

    torch.save(random_moce(ODD, seed=1).state_dict(), tmp_path / "odd.pth")
    (tmp_path / "in").mkdir()
    Image.fromarray((make_images(1, 24, 24)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(
        tmp_path / "in" / "a.png"
    )
    runner = CliRunner()
    base = ["restore", str(tmp_path / "in"), "--weights", str(tmp_path / "odd.pth"), "--device", "cpu", "--quiet"]
    got = runner.invoke(app, [*base, str(tmp_path / "out1")])
    assert got.exit_code == 0, got.output
    lines = [line for line in got.stderr.splitlines() if "assumed" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "odd.pth: MoCE-IR top_k=1 assumed" in lines[0]
    assert "Traceback" not in got.stderr and "ConfigGuessWarning" not in got.stderr
    got = runner.invoke(app, [*base, str(tmp_path / "out2"), "--config", "top_k=2"])
    assert got.exit_code == 0 and "assumed" not in got.stderr, got.output
    one, two = (np.asarray(Image.open(tmp_path / d / "a.png"), dtype=np.int16) for d in ("out1", "out2"))
    assert np.abs(one - two).max() > 0  # top-2 routing restores differently from the assumed top-1
