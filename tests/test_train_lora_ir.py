"""LoRA-IR's three training stages on tiny networks: router (CLIP frozen, cross-entropy), base (no experts), experts
(LoRA only by default, everything with train_all); the results load with irtool.load_model and restore."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import micro_config, micro_dataset

import irtool
from irtool.archs.clip_router import VARIANTS as ROUTER_VARIANTS
from irtool.archs.clip_router import CLIPRouter
from irtool.restoration.tiling import run_padded
from irtool.train import checkpoint
from irtool.train.loop import train
from irtool.train.presets import PRESETS, ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lora_config(stage: str, **overrides):
    # a 112-px router (8x8 CLIP tokens) keeps the router's five views cheap
    values = dict(
        arch="lora_ir",
        variant="tiny",
        model={"image_size": 112} if stage == "router" else {},
        stage=stage,
        reweight="none",
        fft_weight=0.0,
        balance_weight=0.0,
        with_complexity=False,
        pixel_loss="ce" if stage == "router" else "psnr",
        steps=8,
        ckpt_every=8,
        log_every=1,
        lr=2e-3,
    )
    values.update(overrides)
    return micro_config(**values)


def column(path, name):
    with open(path, newline="") as f:
        return [float(r[name]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def released_router(tmp_path_factory):
    """A tiny random router file standing in for the released one (its CLIP tower is what the router stage keeps)."""
    torch.manual_seed(5)
    router = CLIPRouter(dataclasses.replace(ROUTER_VARIANTS["tiny"], classes=("snow", "rain"), image_size=112))
    path = tmp_path_factory.mktemp("released") / "router.safetensors"
    checkpoint.save_weights(path, router, {})
    return path


@pytest.fixture(scope="module")
def stages(tmp_path_factory, released_router):
    """The three stages run one after the other, as a user would."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lora_stages")
    train(
        lora_config("router", init=str(released_router), steps=16, ckpt_every=16, lr=1e-3),
        root / "router",
        dataset=micro_dataset(),
    )
    router = root / "router" / "last.safetensors"
    train(lora_config("base", router=str(router)), root / "base", dataset=micro_dataset())
    base = root / "base" / "last.safetensors"
    train(lora_config("experts", router=str(router), init=str(base)), root / "experts", dataset=micro_dataset())
    train(
        lora_config("experts", router=str(router), init=str(base), train_all=True),
        root / "all",
        dataset=micro_dataset(),
    )
    return root


def test_router_stage_learns_the_tasks_with_clip_frozen(stages, released_router):
    losses = column(stages / "router" / "log.csv", "pixel")
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses
    before, after = load_file(str(released_router)), load_file(str(stages / "router" / "last.safetensors"))
    tower = [k for k in after if k.startswith("clip_model.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert not torch.equal(before["cls_head.weight"], after["cls_head.weight"])
    from irtool.loading import build_model, read_state_dict

    router = build_model(*read_state_dict(stages / "router" / "last.safetensors"))
    assert router.arch == "clip_router" and router.classes == ("noise", "lowlight")


def test_base_stage_trains_the_network_without_experts(stages):
    losses = column(stages / "base" / "log.csv", "pixel")
    assert losses[-1] < losses[0], losses  # PSNR loss = -PSNR: it falls as PSNR rises
    weights = load_file(str(stages / "base" / "last.safetensors"))
    lora_b = [k for k in weights if k.endswith("lora_B_list")]
    assert lora_b and all(not weights[k].any() for k in lora_b)


def test_expert_stage_trains_lora_only_unless_train_all(stages):
    base = load_file(str(stages / "base" / "last.safetensors"))
    experts = load_file(str(stages / "experts" / "last.safetensors"))
    everything = load_file(str(stages / "all" / "last.safetensors"))
    lora = [k for k in base if k.endswith(("lora_A_list", "lora_B_list"))]
    rest = [k for k in base if k not in lora]
    assert all(torch.equal(base[k], experts[k]) for k in rest)
    assert any(experts[k].any() for k in lora if k.endswith("lora_B_list"))
    assert not all(torch.equal(base[k], everything[k]) for k in rest)

    model = irtool.load_model(
        stages / "experts" / "last.safetensors", router=stages / "router" / "last.safetensors", device="cpu"
    )
    assert model.arch == "lora_ir" and model.classes == ("noise", "lowlight")
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        assert run_padded(model, x).output.shape == x.shape  # any size: padded to the multiple, cropped back


def test_stage_errors_are_one_line(tmp_path, released_router):
    with pytest.raises(ConfigError, match="needs --router"):
        train(lora_config("base"), tmp_path / "a", dataset=micro_dataset())
    with pytest.raises(ConfigError, match="pass --init BASE_WEIGHTS"):
        train(lora_config("experts", router=str(released_router)), tmp_path / "b", dataset=micro_dataset())
    # the released-style router names snow/rain; these tasks are noise/lowlight
    with pytest.raises(ConfigError, match=r"classes \(snow, rain\) are not the tasks \(noise, lowlight\)"):
        train(lora_config("base", router=str(released_router)), tmp_path / "c", dataset=micro_dataset())


def test_the_official_stage_recipes():
    router, base, experts = PRESETS["lora_ir-router"], PRESETS["lora_ir-base"], PRESETS["lora_ir-experts"]
    assert router.tasks == base.tasks == ["snow", "rain", "raindrop"]
    assert (router.lr, router.lr_min, router.weight_decay, router.epochs, router.pixel_loss) == (
        2e-4,
        1e-5,
        0.0,
        10,
        "ce",
    )
    assert (base.lr, base.lr_min, base.steps, base.betas, base.weight_decay, base.grad_clip) == (
        1e-3,
        5e-4,
        200_000,
        (0.9, 0.9),
        1e-3,
        0.01,
    )
    assert (experts.lr, experts.lr_min, experts.steps, experts.train_all, experts.pixel_loss) == (
        1e-4,
        1e-5,
        100_000,
        False,
        "psnr",
    )
