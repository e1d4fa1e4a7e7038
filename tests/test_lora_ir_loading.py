"""Loading LoRA-IR: two files (network + router), manifest names, folders, formats, and one clear line per mistake."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import FP32_ATOL, make_images, random_moce
from helpers_lora import MICRO_ROUTER, random_lora_ir
from typer.testing import CliRunner

import irtool
from irtool.archs.moce_ir import VARIANTS as MOCE_VARIANTS
from irtool.cli import app
from irtool.errors import CheckpointError, WeightsNotFoundError
from irtool.restoration.engine import Restorer
from irtool.restoration.planning import RestoreOptions


@pytest.fixture(scope="module")
def pair():
    return random_lora_ir(seed=4)


@pytest.fixture()
def files(tmp_path, pair):
    """The pair saved as the official release does: {'params': state_dict}, the router in bf16."""
    ir = tmp_path / "setting1_ir.pth"
    router = tmp_path / "setting1_router.pth"
    torch.save({"params": pair.ir.state_dict()}, ir)
    torch.save({"params": {k: v.to(torch.bfloat16) for k, v in pair.router.state_dict().items()}}, router)
    return ir, router


def _same_outputs(a, b, atol=1e-5):
    x = make_images(2, 20, 28)
    with torch.no_grad():
        ra, rb = a.run(x), b.run(x)
    torch.testing.assert_close(ra.output, rb.output, atol=atol, rtol=0)
    torch.testing.assert_close(ra.routing.logits, rb.routing.logits, atol=atol, rtol=0)


def _bf16_rounded(pair):
    """The pair with its router weights rounded through bf16, as the saved release file holds them."""
    clone = random_lora_ir(seed=4)
    clone.load_state_dict(pair.state_dict())
    with torch.no_grad():
        for p in clone.router.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return clone


def test_network_and_router_files_load_as_one_model(files, pair):
    ir, router = files
    model = irtool.load_model(ir, device="cpu", router=router)
    assert type(model).__name__ == "LoRAIR" and model.arch == "lora_ir"
    assert model.config.ir == pair.ir.config and model.config.router == pair.router.config
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 router upcast on the CPU
    _same_outputs(model, _bf16_rounded(pair))


def test_a_folder_with_both_files_and_a_cached_manifest_name(files, pair):
    ir, router = files
    model = irtool.load_model(ir.parent, device="cpu")
    _same_outputs(model, _bf16_rounded(pair))
    restorer = Restorer.load(RestoreOptions(weights=str(ir.parent), device="cpu"))  # --weights FOLDER: both files
    assert restorer.weights_path == ir and restorer.net.classes == model.classes

    from irtool.weights import catalogue

    entry = catalogue.find_entry("lora_ir.setting1")
    entry.folder.mkdir(parents=True)
    shutil.copy(ir, entry.folder / "setting1_ir.pth")
    with pytest.raises(WeightsNotFoundError, match="setting1_router.pth missing"):
        irtool.load_model("lora_ir.setting1", device="cpu")
    shutil.copy(router, entry.folder / "setting1_router.pth")
    by_name = irtool.load_model("LoRA_IR_Setting1", device="cpu")  # an alias
    assert by_name.classes == tuple(entry.data["classes"]) == ("snow", "rain", "raindrop")
    _same_outputs(by_name, model, atol=FP32_ATOL)  # two instances


def test_manifest_class_names_override_the_defaults(files, monkeypatch):
    from irtool.weights import catalogue

    ir, router = files
    entry = catalogue.find_entry("lora_ir.setting1")
    entry.folder.mkdir(parents=True)
    shutil.copy(ir, entry.folder / "setting1_ir.pth")
    shutil.copy(router, entry.folder / "setting1_router.pth")
    renamed = {**entry.data, "classes": ["desnow", "derain", "deraindrop"]}
    monkeypatch.setattr(catalogue, "find_entry", lambda name: catalogue.Entry(entry.name, renamed))
    model = irtool.load_model("lora_ir.setting1", device="cpu")
    assert model.classes == ("desnow", "derain", "deraindrop")
    restorer = Restorer.load(RestoreOptions(model="lora_ir.setting1", device="cpu"))  # restore resolves it the same
    assert restorer.net.classes == model.classes and restorer.weights_path == entry.folder / "setting1_ir.pth"
    with torch.no_grad():
        assert model.classify(model.route(make_images(1, 16, 16)))[0][0] in model.classes
    two = {**entry.data, "classes": ["a", "b"]}
    monkeypatch.setattr(catalogue, "find_entry", lambda name: catalogue.Entry(entry.name, two))
    with pytest.raises(CheckpointError, match="manifest names 2 classes but the router has 3"):
        irtool.load_model("lora_ir.setting1", device="cpu")


def test_safetensors_files_and_an_old_position_ids_buffer(tmp_path, pair):
    from safetensors.torch import save_file

    ir_sd = {k: v.contiguous() for k, v in pair.ir.state_dict().items()}
    router_sd = {k: v.contiguous() for k, v in pair.router.state_dict().items()}
    router_sd["clip_model.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    save_file(ir_sd, str(tmp_path / "ir.safetensors"))
    save_file(router_sd, str(tmp_path / "router.safetensors"))
    model = irtool.load_model(tmp_path, device="cpu")  # the weights cache's imported layout
    _same_outputs(model, pair, atol=FP32_ATOL)  # two instances


def test_a_network_without_its_router_is_one_clear_line(files):
    ir, _ = files
    message = r"setting1_ir\.pth: a LoRA-IR restoration network needs its CLIP router file too"
    with pytest.raises(CheckpointError, match=message):
        irtool.load_model(ir, device="cpu")


def test_wrong_router_arguments(files, tmp_path):
    ir, router = files
    with pytest.raises(CheckpointError, match=r"a LoRA-IR CLIP router alone restores nothing"):
        irtool.load_model(router, device="cpu")
    with pytest.raises(CheckpointError, match=r"given as the router but it is a LoRA-IR checkpoint"):
        irtool.load_model(ir, device="cpu", router=ir)
    with pytest.raises(CheckpointError, match=r"no such router file"):
        irtool.load_model(ir, device="cpu", router=tmp_path / "nope.pth")
    moce = tmp_path / "moce" / "last.ckpt"
    moce.parent.mkdir()
    torch.save({"state_dict": random_moce(MOCE_VARIANTS["tiny"]).state_dict()}, moce)
    with pytest.raises(CheckpointError, match=r"a MoCE-IR checkpoint takes no router file"):
        irtool.load_model(moce, device="cpu", router=router)


def test_a_router_that_does_not_fit_the_network(files, tmp_path):
    from dataclasses import replace

    from irtool.archs.clip_router import CLIPRouter

    ir, _ = files
    other = CLIPRouter(replace(MICRO_ROUTER, classes=("a", "b")))
    torch.save({"params": other.state_dict()}, tmp_path / "two_class_router.pth")
    message = r"two_class_router\.pth: does not fit .*2 classes but the network 3 experts"
    with pytest.raises(CheckpointError, match=message):
        irtool.load_model(ir, device="cpu", router=tmp_path / "two_class_router.pth")


@pytest.mark.cuda  # the router runs bf16 there
def test_the_router_runs_bf16_on_cuda(files):
    ir, router = files
    model = irtool.load_model(ir, device="cuda", router=router)
    assert model.router.cls_head.weight.dtype == torch.bfloat16 and model.ir.intro.conv.weight.dtype == torch.float32
    with torch.no_grad():
        result = model.run(make_images(1, 32, 32).cuda())
    assert result.routing.logits.dtype == torch.float32 and torch.isfinite(result.output).all()


def test_inspect_describes_each_file(files):
    ir, router = files
    runner = CliRunner()
    for path, arch in ((ir, "lora_ir"), (router, "clip_router")):
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["arch"] == arch
    assert info["config"]["classes"] == ["snow", "rain", "raindrop"]
