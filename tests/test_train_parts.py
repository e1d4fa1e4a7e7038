"""Training building blocks: per-sample losses, the learning-rate schedule, the sampler, augmentation, presets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irtool.train import losses
from irtool.train.data import EpochBatchSampler, dihedral
from irtool.train.loop import lr_at
from irtool.train.presets import PRESETS, ConfigError, TrainConfig, resolve, resume_config


def test_per_sample_losses_average_to_the_official_batch_losses():
    pred, gt = torch.rand(3, 3, 16, 24), torch.rand(3, 3, 16, 24)
    assert losses.l1(pred, gt).mean().item() == pytest.approx(F.l1_loss(pred, gt).item(), rel=1e-6)
    # MoCE-IR's FFTLoss: L1 between the stacked real and imaginary parts of rfft2
    a, b = torch.fft.rfft2(pred), torch.fft.rfft2(gt)
    official = F.l1_loss(torch.stack([a.real, a.imag], -1), torch.stack([b.real, b.imag], -1))
    assert losses.fft_l1(pred, gt).mean().item() == pytest.approx(official.item(), rel=1e-5)
    # LoRA-IR's PSNRLoss is minus the PSNR in dB
    mse = ((pred - gt) ** 2).flatten(1).mean(1)
    assert losses.psnr_loss(pred, gt).tolist() == pytest.approx((10 * torch.log10(mse + 1e-8)).tolist(), rel=1e-5)


def test_task_sums():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sums, counts = losses.task_sums(values, torch.tensor([2, 0, 2, 2]), 4)
    assert sums.tolist() == [2.0, 0.0, 8.0, 0.0] and counts.tolist() == [1, 0, 3, 0]


def _bolts(epoch, warmup, length, lr):
    """pl_bolts' LinearWarmupCosineAnnealingLR closed form (warmup_start_lr 0, eta_min 0), as MoCE-IR uses it."""
    if epoch < warmup:
        return epoch * lr / (warmup - 1)
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup) / (length - warmup)))


def test_the_moce_ir_schedule_per_epoch():
    config = PRESETS["moce_ir-aio3"]
    spe, total = 10, 120 * 10
    by_epoch = [lr_at(config, e * spe, spe, total) for e in range(120)]
    assert all(lr_at(config, e * spe + 7, spe, total) == by_epoch[e] for e in range(120))  # constant within an epoch
    assert by_epoch[0] == pytest.approx(2e-4 / 15) and by_epoch[14] == pytest.approx(2e-4)
    for e in range(14, 120):  # from the end of the warm-up on, the official curve
        assert by_epoch[e] == pytest.approx(_bolts(e, 15, 150, 2e-4), rel=1e-12)
    assert lr_at(config, 120 * spe, spe, total) == pytest.approx(2.3e-5, rel=0.05)  # where the official run stops


def test_a_step_schedule_ends_at_lr_min():
    config = TrainConfig(steps=100, warmup=10, lr=1e-3, lr_min=1e-5, sources=PRESETS["moce_ir-aio3"].sources)
    lrs = [lr_at(config, s, 7, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05) and lr_at(config, 100, 7, 100) == pytest.approx(1e-5)


def test_sharded_batches_cover_the_same_images_as_one_process():
    one = EpochBatchSampler(50, 6, seed=3)
    shards = [EpochBatchSampler(50, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(shards[0]) == len(shards[1]) == 8
    for j, (a, b0, b1) in enumerate(zip(one, *shards)):
        assert sorted(a) == sorted(b0 + b1), j
        assert not set(b0) & set(b1)
    one.set_position(1, 5)  # resume: epoch 1 from its 6th batch
    fresh = EpochBatchSampler(50, 6, seed=3)
    fresh.set_position(1)
    assert list(one) == list(fresh)[5:]
    assert list(fresh) != [b for b in EpochBatchSampler(50, 6, seed=3)]  # epochs differ


def test_dihedral_modes_are_the_eight_symmetries():
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    outs = {dihedral(image, m).tobytes() + bytes(dihedral(image, m).shape) for m in range(8)}
    assert len(outs) == 8 and np.array_equal(dihedral(image, 0), image)


def test_presets_carry_the_official_recipes():
    aio3, aio5 = PRESETS["moce_ir-aio3"], PRESETS["moce_ir-aio5"]
    assert {s.task: s.repeat for s in aio5.sources} == {
        "denoise_15": 3,
        "denoise_25": 3,
        "denoise_50": 3,
        "derain": 120,
        "dehaze": 1,
        "deblur": 5,
        "lowlight": 20,
    }
    assert aio3.tasks == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    assert (aio3.lr, aio3.weight_decay, aio3.warmup, aio3.schedule_length, aio3.epochs) == (2e-4, 0.01, 15, 150, 120)
    assert (aio3.fft_weight, aio3.balance_weight, aio3.with_complexity, aio3.patch_size, aio3.batch_size) == (
        0.1,
        0.01,
        True,
        128,
        8,
    )
    assert PRESETS["moce_ir_s-aio3"].variant == "MoCE_IR_S" and aio3.variant == "MoCE_IR"


def test_the_default_model_presets_train_one_recipe_on_cpu_and_on_a_gpu(tmp_path):
    """irtool_default-cpu (the shipped model's recipe) and -h200 differ only in how the step is run and fed."""
    from irtool.train.presets import SYNTHETIC_TASKS, resolve

    cpu, gpu = PRESETS["irtool_default-cpu"], PRESETS["irtool_default-h200"]
    recipe = ("model", "patch_size", "fft_weight", "balance_weight", "with_complexity", "route_task_weight", "seed")
    assert all(getattr(cpu, f) == getattr(gpu, f) for f in recipe)
    assert (cpu.fft_weight, cpu.balance_weight, cpu.with_complexity, cpu.patch_size) == (0.1, 0.01, True, 128)
    assert cpu.route_task_weight > 0 and (cpu.precision, gpu.precision, gpu.channels_last) == ("auto", "bf16", True)
    assert gpu.batch_size == 32 * cpu.batch_size and gpu.lr == pytest.approx(cpu.lr * 32**0.5)
    config = resolve("irtool_default-cpu", None, {}, clean_dir=str(tmp_path), tasks=None)
    assert config.tasks == list(SYNTHETIC_TASKS) and "clean" in config.tasks and "defocus" in config.tasks


def test_toml_configs_read_on_pythons_without_tomllib(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: tomli (same API, installed there with irtool) stands in; without either, one line."""
    import sys
    import types

    from irtool.train.presets import ConfigError, read_config_file

    (tmp_path / "c.toml").write_text("batch_size = 2\nmodel = { dim = 24 }\n")
    calls = []
    backport = types.ModuleType("tomli")
    backport.loads = lambda text: calls.append(text) or {"batch_size": 2, "model": {"dim": 24}}
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on 3.10: `import tomllib` raises ImportError
    monkeypatch.setitem(sys.modules, "tomli", backport)
    assert read_config_file(tmp_path / "c.toml") == {"batch_size": 2, "model": {"dim": 24}} and len(calls) == 1
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ConfigError, match="TOML config files need Python 3.11, or the tomli package"):
        read_config_file(tmp_path / "c.toml")
    (tmp_path / "c.json").write_text('{"batch_size": 2}')
    assert read_config_file(tmp_path / "c.json") == {"batch_size": 2}  # JSON needs neither


def test_config_layers_and_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text('batch_size = 2\nmodel = { dim = 24 }\nreweight = "art"\n')
    config = resolve(
        None, tmp_path / "c.toml", {"lr": 1e-3, "steps": 10}, clean_dir=str(tmp_path), tasks=["noise", "rain"]
    )
    assert (config.batch_size, config.model, config.reweight, config.lr, config.steps) == (
        2,
        {"dim": 24},
        "art",
        1e-3,
        10,
    )
    assert config.tasks == ["noise", "rain"]
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    (tmp_path / "c.json").write_text(config.to_json())
    assert resolve(None, tmp_path / "c.json") == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": {"batch_sise": 2}}, "unknown field"),
        ({"overrides": {"reweight": "art", "pixel_loss": "psnr"}}, "Art reweights"),
        ({"tasks": ["noise", "fog"]}, "unknown degradation 'fog'"),
        ({"overrides": {"patch_size": 100}}, "multiple of 8"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, kwargs, message):
    kwargs.setdefault("tasks", ["noise"])
    with pytest.raises(ConfigError, match=message):
        resolve(None, None, kwargs.get("overrides"), clean_dir=str(tmp_path), tasks=kwargs["tasks"])


def test_resume_config_only_lets_runtime_fields_change(tmp_path):
    config = resolve(None, None, {"steps": 5}, clean_dir=str(tmp_path), tasks=["noise"])
    (tmp_path / "config.json").write_text(config.to_json())
    assert resume_config(tmp_path, {"num_workers": 0}).num_workers == 0
    with pytest.raises(ConfigError, match="--lr cannot change"):
        resume_config(tmp_path, {"lr": 1.0})
