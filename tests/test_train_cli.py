"""`irtool train` on the command line: the resolved config, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from irtool.cli import app
from irtool.train.presets import TrainConfig

runner = CliRunner()


def test_print_config_is_a_valid_config_file_and_needs_no_torch(tmp_path):
    probe = (
        "import sys; from irtool.cli import main; sys.argv = ['irtool', 'train', '--preset', 'moce_ir-aio5', "
        "'--print-config', '--batch-size', '4', '--reweight', 'art', '--blocks', '1,1,1,2']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nsys.stderr.write(str('torch' in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.strip() == "False", done.stderr
    config = TrainConfig.from_dict(json.loads(done.stdout))
    assert (config.preset, config.batch_size, config.reweight, config.model) == (
        "moce_ir-aio5",
        4,
        "art",
        {"num_blocks": [1, 1, 1, 2]},
    )
    (tmp_path / "c.json").write_text(done.stdout)
    again = runner.invoke(app, ["train", "--config-file", str(tmp_path / "c.json"), "--print-config"])
    assert again.exit_code == 0 and TrainConfig.from_dict(json.loads(again.stdout)) == config


def test_clean_dir_flags_make_the_sources(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--clean-dir",
            str(tmp_path),
            "--tasks",
            "noise,jpeg",
            "--variant",
            "tiny",
            "--steps",
            "50",
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_dict(json.loads(result.stdout))
    assert config.tasks == ["noise", "jpeg"] and config.variant == "tiny" and config.steps == 50
    assert all(s.clean_dir == str(tmp_path) and s.degrade == s.task for s in config.sources)


def test_bad_options_are_one_line_errors(tmp_path):
    cases = [
        (["--clean-dir", str(tmp_path), "--tasks", "noise,fog"], "unknown degradation 'fog'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "moce_ir-aio3", "--steps", "10"], "--schedule-unit step"),
        (["--out", str(tmp_path), "--resume"], "config.json: not found"),
        ([], "no training data"),
    ]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "irtool", "train", *args], capture_output=True, text=True)
        assert done.returncode == 1, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, done.stderr)
    assert runner.invoke(app, ["train", "--blocks", "1,x"]).exit_code == 2


def test_flags_are_made_from_the_config_fields(tmp_path, monkeypatch):
    from dataclasses import dataclass, field, fields

    from irtool.cli import train as train_cli
    from irtool.train import presets

    made = {f.field for f in train_cli.CONFIG_FLAGS if f.field}
    # every field is a flag, but the preset (--preset), the sources (--clean-dir/--tasks) and the network mapping
    # (--dim, --blocks, ...: presets.MODEL_FIELDS)
    assert made == {f.name for f in fields(TrainConfig)} - {"preset", "sources", "model"}
    assert {f.model_key for f in train_cli.CONFIG_FLAGS if f.model_key} == set(presets.MODEL_FIELDS.values())

    args = ["train", "--clean-dir", str(tmp_path), "--betas", "0.8,0.99", "--art-init", "0.2", "--compile",
            "--no-complexity", "--loss", "l1", "--variant", "tiny", "--print-config"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_dict(json.loads(result.stdout))
    assert (config.betas, config.art_init, config.compile, config.with_complexity, config.variant) == (
        (0.8, 0.99),
        0.2,
        True,
        False,
        "tiny",
    )
    assert runner.invoke(app, ["train", "--betas", "0.9"]).exit_code == 2  # two values

    @dataclass(frozen=True)
    class Grown(TrainConfig):  # a field added to the config is a flag at once, typed and with its help
        ema_decay: float | None = field(default=None, metadata={"help": "EMA of the weights.", "panel": "Optimisation"})

    monkeypatch.setattr(presets, "TrainConfig", Grown)
    (grown,) = [f for f in train_cli.config_flags() if f.field == "ema_decay"]
    assert (grown.names, grown.kind, grown.help, grown.panel) == (
        ("--ema-decay",),
        float,
        "EMA of the weights.",
        "Optimisation",
    )


def _photos(folder, n=6):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{k}.png")
    return folder


#: a run of a micro network on 32-px patches: a CPU step takes a fraction of a second
MICRO_RUN = ["--tasks", "noise,lowlight", "--variant", "tiny", "--dim", "8", "--blocks", "1,1,1,1",
             "--dec-blocks", "1,1,1", "--heads", "1,1,2,2", "--patch-size", "32", "--batch-size", "4",
             "--warmup", "2", "--ckpt-every", "1000", "--log-every", "1", "--val-count", "0", "--num-workers", "1",
             "--device", "cpu"]  # fmt: skip


def test_ctrl_c_saves_the_run_says_so_in_one_line_and_resume_continues_from_that_step(tmp_path):
    import os
    import re
    import signal
    import time
    from pathlib import Path

    from irtool.train import checkpoint

    out = tmp_path / "run"
    args = ["train", "--clean-dir", str(_photos(tmp_path / "photos")), *MICRO_RUN, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "irtool", *args, "--steps", "200"], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while not (out / "log.csv").is_file() or len((out / "log.csv").read_text().splitlines()) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the loader worker too
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    said = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "Traceback" not in stderr, stderr
    found = re.fullmatch(rf"interrupted at step (\d+); saved to {re.escape(str(out))}; continue with --resume", said[0])
    assert found, said[0]
    step = int(found[1])
    assert 3 <= step < 200 and checkpoint.load_state(out / "last.state.pt")["step"] == step

    # the same command with --resume (and a shorter run: --steps may change) goes on from that step
    resumed = runner.invoke(app, [*args, "--steps", str(step + 2), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming at step {step}" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["steps"], summary["trained_steps"]) == (step + 2, 2)


#: a process that has used OpenCV's thread pool (any decode or resize of a large image) and then trains with loader
#: workers: forked workers used to hang for ever reconfiguring a pool whose threads only the parent has
AFTER_OPENCV = """
import sys, cv2, numpy as np
for _ in range(2):
    cv2.GaussianBlur(np.random.rand(2000, 2000).astype("float32"), (31, 31), 5)
from typer.testing import CliRunner
from irtool.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(result.exit_code, result.output.strip().splitlines()[-1])
"""


def test_training_with_loader_workers_after_opencv_has_run_in_the_process_finishes(tmp_path):
    import os
    from pathlib import Path

    out = tmp_path / "run"
    args = ["train", "--clean-dir", str(_photos(tmp_path / "photos")), *MICRO_RUN, "--steps", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", AFTER_OPENCV, *args], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0 and done.stdout.startswith("0 weights: "), done.stdout + done.stderr
    assert (out / "last.safetensors").is_file()


def _resolved(monkeypatch, cuda, *args):
    """(the config `irtool train` would run, its stderr) with CUDA available or not; training itself is stubbed."""
    import torch

    import irtool.train.loop

    ran = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(irtool.train.loop, "train", lambda cfg, out, **kwargs: ran.append(cfg))
    result = runner.invoke(app, ["train", *map(str, args)])
    assert result.exit_code == 0, result.output
    (config,) = ran
    return config, result.stderr


def test_without_cuda_the_default_is_a_run_of_minutes_and_one_line_says_so(tmp_path, monkeypatch):
    from irtool.train import presets

    photos = tmp_path / "photos"
    on_cpu, said = _resolved(monkeypatch, False, "--clean-dir", photos, "--out", tmp_path / "a")
    assert (on_cpu.preset, on_cpu.steps, on_cpu.model) == ("quick", 420, presets.preset("irtool_default-cpu").model)
    lines = [line for line in said.splitlines() if line.strip()]
    assert lines == [
        "no CUDA GPU: training preset quick (the built-in model's small network, 420 steps; about 10 min on a free "
        "CPU core); the paper's MoCE-IR-S is --preset custom (about 78 h on a CPU core), or choose --steps, --variant"
    ]
    on_gpu, said = _resolved(monkeypatch, True, "--clean-dir", photos, "--out", tmp_path / "b")
    assert (on_gpu.preset, on_gpu.variant, on_gpu.steps, on_gpu.model) == ("custom", "MoCE_IR_S", 20_000, {})
    assert said.strip() == ""
    # a device named on the command line decides without asking torch; a preset named is always the one run
    on_cpu, said = _resolved(monkeypatch, True, "--clean-dir", photos, "--device", "cpu")
    assert on_cpu.preset == "quick" and said.startswith("--device cpu: training preset quick")
    assert _resolved(monkeypatch, False, "--clean-dir", photos, "--device", "cuda:1")[0].preset == "custom"
    explicit, said = _resolved(monkeypatch, False, "--clean-dir", photos, "--preset", "custom")
    assert explicit.steps == 20_000 and "no CUDA GPU" not in said
    # flags lay over the CPU default; its estimate follows --steps, and a network of another cost has none
    longer, said = _resolved(monkeypatch, False, "--clean-dir", photos, "--steps", "1500")
    assert longer.steps == 1500 and "1,500 steps; about 35 min" in said
    # another variant drops the preset's own network fields (they refine its variant, not the one named)
    tiny, said = _resolved(monkeypatch, False, "--clean-dir", photos, "--variant", "tiny")
    assert (tiny.preset, tiny.variant, tiny.model) == ("quick", "tiny", {}) and "its ETA shows once it runs" in said


def test_train_help_shows_a_quick_cpu_run_and_the_papers_preset_on_a_gpu():
    result = runner.invoke(app, ["train", "--help"], terminal_width=80)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "irtool train --clean-dir photos/ --out runs/quick" in lines
    assert "irtool train --preset moce_ir_s-aio3 --data-root ~/datasets --device cuda" in lines
    # both run as shown: the quick run's preset exists, the GPU one is the paper's recipe
    quick = runner.invoke(app, ["train", "--clean-dir", "photos/", "--device", "cpu", "--print-config"])
    assert json.loads(quick.stdout)["preset"] == "quick"
    paper = runner.invoke(app, ["train", "--preset", "moce_ir_s-aio3", "--data-root", "~/datasets", "--print-config"])
    assert json.loads(paper.stdout)["variant"] == "MoCE_IR_S" and json.loads(paper.stdout)["epochs"] == 120
