"""Resuming a run: with its original flags, from another working folder, with more steps; warnings at the start;
the run's files keep the usual file mode."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_helpers import add_noise, clean_images, micro_config, micro_dataset
from typer.testing import CliRunner

from irtool.cli import app
from irtool.train import checkpoint
from irtool.train.data import ValPair, to_tensor
from irtool.train.loop import TrainError, lr_at, train
from irtool.train.presets import ConfigError, TaskSource, TrainConfig, absolute_paths, resolve, resume_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _events():
    seen: list[tuple[str, dict]] = []
    return seen, lambda kind, info: seen.append((kind, info))


def _warnings(seen) -> list[str]:
    return [info["message"] for kind, info in seen if kind == "warning"]


def _write_photos(folder: Path, n: int, size: int = 48) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(clean_images(n, size=size)):
        cv2.imwrite(str(folder / f"p{i}.png"), np.rint(image[..., ::-1] * 255).astype(np.uint8))


CLI_RUN = [
    "train",
    "--preset",  # named: without it the recipe depends on whether CUDA is there
    "custom",
    "--clean-dir",
    "photos",
    "--tasks",
    "noise,jpeg",
    "--variant",
    "tiny",
    "--dim",
    "8",
    "--blocks",
    "1,1,1,1",
    "--patch-size",
    "32",
    "--batch-size",
    "2",
    "--warmup",
    "1",
    "--val-count",
    "0",
    "--ckpt-every",
    "2",
    "--num-workers",
    "0",
    "--out",
    "run",
    "--json",
]


def _cli(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_resume_with_the_original_flags_from_anywhere_and_with_more_steps(tmp_path, monkeypatch):
    """The original command line plus --resume continues the run; a relative --clean-dir is saved absolute, so the
    run resumes from another folder; --steps may grow; a different recipe is refused naming each field."""
    _write_photos(tmp_path / "photos", 4)
    monkeypatch.chdir(tmp_path)
    assert _cli([*CLI_RUN, "--steps", "2"])["steps"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {s["clean_dir"] for s in saved["sources"]} == {str(tmp_path / "photos")}

    again = _cli([*CLI_RUN, "--steps", "2", "--resume"])
    assert (again["steps"], again["trained_steps"]) == (2, 0)
    longer = _cli([*CLI_RUN, "--steps", "4", "--resume"])
    assert (longer["steps"], longer["trained_steps"]) == (4, 2)

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = _cli(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "6", "--json"])
    assert (moved["steps"], moved["trained_steps"]) == (6, 2)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 6

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*CLI_RUN, "--steps", "6", "--resume", "--lr", "0.5", "--seed", "3", "--dim", "16"]
    done = subprocess.run(
        [sys.executable, "-m", "irtool", *args], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "--model, --lr, --seed cannot change" in lines[0] and "lr: saved 0.0002, given 0.5" in lines[0], lines[0]
    assert "config.json" in lines[0]


def test_resume_config_lays_the_stated_flags_over_the_saved_recipe(tmp_path):
    photos = tmp_path / "photos"
    config = resolve("irtool_default-cpu", None, {"steps": 5, "lr": 1e-3}, clean_dir=str(photos), tasks=["noise"])
    (tmp_path / "config.json").write_text(config.to_json())
    stated = dict(preset_name="irtool_default-cpu", clean_dir=str(photos), tasks=["noise"])
    assert resume_config(tmp_path, {"steps": 5, "lr": 1e-3}, **stated).to_json() == config.to_json()
    assert resume_config(tmp_path, {"epochs": 2}).total_steps(10) == 20
    with pytest.raises(ConfigError, match="--preset, --sources cannot change") as caught:
        resume_config(tmp_path, preset_name="custom", clean_dir=str(tmp_path), tasks=["noise", "rain"])
    assert "sources: saved noise <- " in str(caught.value) and "\n" not in str(caught.value)
    # every path of a recipe is stored absolute, against the folder the run starts in
    noise = TaskSource("noise", clean_dir="a", degrade="noise")
    relative = TrainConfig(sources=(noise,), val_dir="v", init="w.pt", router="~/r.pt")
    stored = absolute_paths(replace(relative, data_root="../data"), base=tmp_path)
    assert (stored.sources[0].clean_dir, stored.val_dir, stored.init) == tuple(
        str(tmp_path / p) for p in ("a", "v", "w.pt")
    )
    assert stored.router == str(Path("~/r.pt").expanduser()) and stored.data_root == str(tmp_path.parent / "data")


def test_more_steps_on_resume_follow_the_longer_schedule(tmp_path):
    """A run of 4 steps resumed with 8 continues to 8, with the learning rate of an 8-step run from step 4 on (the
    cosine rises back from its finished end); fewer steps than already trained are refused."""
    short = micro_config(steps=4, warmup=1, ckpt_every=4, reweight="none", fft_weight=0.0)
    train(short, tmp_path, dataset=micro_dataset())
    longer = micro_config(steps=8, warmup=1, ckpt_every=4, reweight="none", fft_weight=0.0)
    seen, sink = _events()
    summary = train(longer, tmp_path, dataset=micro_dataset(), resume=True, on_event=sink)
    assert (summary["steps"], summary["trained_steps"]) == (8, 4)
    lrs = [float(row.split(",")[2]) for row in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert lrs[:4] == pytest.approx([lr_at(short, s, 1, 4) for s in range(4)], rel=1e-5)
    assert lrs[4:] == pytest.approx([lr_at(longer, s, 1, 8) for s in range(4, 8)], rel=1e-5)
    (line,) = [w for w in _warnings(seen) if "instead of 4" in w]
    assert line.startswith("resumed at step 4 with a run of 8 steps instead of 4: the learning rate follows the ")
    assert checkpoint.load_state(tmp_path / "last.state.pt")["total_steps"] == 8
    with pytest.raises(TrainError, match="already at step 8, past the end of this one .step 6.; pass --steps 8"):
        shorter = micro_config(steps=6, warmup=1, ckpt_every=4, reweight="none", fft_weight=0.0)
        train(shorter, tmp_path, dataset=micro_dataset(), resume=True)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 8  # the refused resume changed nothing


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_run_files_get_the_usual_mode_and_a_long_warm_up_is_warned_about(tmp_path, umask, mode):
    images = clean_images(2, size=32)
    rng = np.random.default_rng(0)
    val = [ValPair(to_tensor(add_noise(im, rng)), to_tensor(im), 0, f"v{i}") for i, im in enumerate(images)]
    seen, sink = _events()
    old = os.umask(umask)
    try:
        config = micro_config(steps=2, warmup=5, ckpt_every=2)
        train(config, tmp_path, dataset=micro_dataset(), val_pairs=val, on_event=sink)
    finally:
        os.umask(old)
    names = {"last.safetensors", "best.safetensors", "last.state.pt", "config.json", "summary.json", "log.csv"}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.is_file()}
    assert names <= set(modes) and set(modes.values()) == {mode}, {k: oct(v) for k, v in modes.items()}
    assert _warnings(seen) == [
        "the warm-up (5 steps) is not shorter than the run (2 steps): the learning rate only climbs and never "
        "anneals; lower --warmup"
    ]
