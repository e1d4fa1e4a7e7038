"""The training loop on CPU with a micro MoCE-IR: learning, checkpoints that load, bit-exact resume, kill and resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import micro_config, micro_dataset

import irtool
from irtool.errors import CheckpointError
from irtool.restoration.tiling import run_padded
from irtool.train import checkpoint
from irtool.train.loop import TrainError, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons between runs need the same reduction order
    yield
    torch.set_num_threads(threads)


class Stop(Exception):
    pass


def stop_at(step: int):
    def sink(kind, info):
        if kind == "checkpoint" and info["step"] == step:
            raise Stop

    return sink


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = checkpoint.load_state(a / "last.state.pt"), checkpoint.load_state(b / "last.state.pt")
    assert sa["step"] == sb["step"] and sa["art"] == sb["art"]
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name in oa[k]:
            assert torch.equal(oa[k][name], ob[k][name]), (k, name)
    assert torch.equal(sa["rng"][0]["generators"]["noise"], sb["rng"][0]["generators"]["noise"])


def test_loss_falls_and_the_weights_load_with_load_model(tmp_path):
    config = micro_config(steps=32, warmup=4, lr=2e-3, ckpt_every=16, log_every=4, reweight="none", fft_weight=0.0)
    summary = train(config, tmp_path, dataset=micro_dataset())
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(4, 33, 4))
    first, last = float(rows[0]["pixel"]), float(rows[-1]["pixel"])
    assert last < 0.6 * first, (first, last)
    assert summary["steps"] == 32 and summary["final_loss"] == pytest.approx(float(rows[-1]["loss"]), rel=0.5)

    model = irtool.load_model(tmp_path / "last.safetensors", device="cpu")
    assert model.arch == "moce_ir" and model.config.dim == 8 and model.config.with_complexity is True
    info = checkpoint.read_train_info(tmp_path / "last.safetensors")
    assert info["step"] == 32 and info["tasks"] == ["noise", "lowlight"] and info["seed"] == 0
    x = torch.rand(1, 3, 36, 44)
    trained = load_file(str(tmp_path / "last.safetensors"))
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert run_padded(model, x).output.shape == x.shape  # any size: padded to the multiple, cropped back
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 32
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 32


def test_resume_continues_bit_exactly(tmp_path):
    config = micro_config(steps=6, ckpt_every=3)
    train(config, tmp_path / "straight", dataset=micro_dataset())
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", dataset=micro_dataset(), on_event=stop_at(3))
    assert checkpoint.load_state(tmp_path / "stopped" / "last.state.pt")["step"] == 3
    summary = train(config, tmp_path / "stopped", dataset=micro_dataset(), resume=True)
    assert summary["trained_steps"] == 3
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    # the log of the resumed run reads as one run
    assert [r["step"] for r in read_log(tmp_path / "stopped" / "log.csv")] == [str(s) for s in range(1, 7)]
    straight, resumed = read_log(tmp_path / "straight" / "log.csv"), read_log(tmp_path / "stopped" / "log.csv")
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k not in ("it_per_s", "seconds")} == {
            k: v for k, v in b.items() if k not in ("it_per_s", "seconds")
        }


def test_a_run_is_not_overwritten_and_a_resume_must_keep_the_recipe(tmp_path):
    config = micro_config(steps=3, ckpt_every=3)
    train(config, tmp_path, dataset=micro_dataset())
    with pytest.raises(TrainError, match="already holds a run"):
        train(config, tmp_path, dataset=micro_dataset())
    with pytest.raises(TrainError, match=r"different recipe \(lr changed\)"):
        train(micro_config(steps=3, ckpt_every=3, lr=0.5), tmp_path, dataset=micro_dataset(), resume=True)
    # weights and state from different steps (a kill between the two renames) are refused
    checkpoint.save_weights(
        tmp_path / "last.safetensors", irtool.load_model(tmp_path / "last.safetensors"), {"step": 2}
    )
    with pytest.raises(CheckpointError, match="from step 2 but last.state.pt from step 3"):
        train(config, tmp_path, dataset=micro_dataset(), resume=True)


KILLED_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from train_helpers import micro_config, micro_dataset
from irtool.train.loop import train
train(micro_config(steps=24, ckpt_every=4, log_every=1, num_workers=1), {out!r}, dataset=micro_dataset())
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """Killed (SIGKILL) with one loader worker, resumed and compared with a straight run without workers: samples
    depend on (seed, epoch, index) only, so the worker count does not change the run."""
    out = tmp_path / "killed"
    script = KILLED_RUN.format(tests=str(REPO / "tests"), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    try:
        while not (out / "last.state.pt").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoint.load_state(out / "last.state.pt")["step"]
    assert killed_at < 24

    summary = train(micro_config(steps=24, ckpt_every=4, log_every=1), out, dataset=micro_dataset(), resume=True)
    assert summary["trained_steps"] == 24 - killed_at
    train(micro_config(steps=24, ckpt_every=4, log_every=1), tmp_path / "straight", dataset=micro_dataset())
    assert_same_run(tmp_path / "straight", out)
    assert [int(r["step"]) for r in read_log(out / "log.csv")] == list(range(1, 25))


INTERRUPTED_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from train_helpers import micro_config, micro_dataset
from irtool.train.loop import TrainInterrupted, train
try:
    train(micro_config(steps=40, ckpt_every=1000, log_every=1, num_workers=1), {out!r}, dataset=micro_dataset())
except TrainInterrupted as stopped:
    print(stopped.step)
    sys.exit(130)
"""


def test_ctrl_c_saves_the_step_it_stopped_after_and_the_resumed_run_is_the_straight_one(tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C, the loader worker included) between two
    checkpoints: the run finishes its step, saves it and stops; resumed, it ends as a run never interrupted."""
    out = tmp_path / "stopped"
    script = INTERRUPTED_RUN.format(tests=str(REPO / "tests"), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while not (out / "log.csv").is_file() or len(read_log(out / "log.csv")) < 3:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, "the run was not stopped by Ctrl-C"
    stopped_at = int(stdout.split()[-1])
    assert 3 <= stopped_at < 40
    assert checkpoint.load_state(out / "last.state.pt")["step"] == stopped_at
    assert checkpoint.read_train_info(out / "last.safetensors")["step"] == stopped_at

    summary = train(micro_config(steps=40, ckpt_every=1000, log_every=1), out, dataset=micro_dataset(), resume=True)
    assert summary["trained_steps"] == 40 - stopped_at
    train(micro_config(steps=40, ckpt_every=1000, log_every=1), tmp_path / "straight", dataset=micro_dataset())
    assert_same_run(tmp_path / "straight", out)
    assert [int(r["step"]) for r in read_log(out / "log.csv")] == list(range(1, 41))


def _broken_reader(path):
    from irtool.errors import ImageError

    raise ImageError(f"{path}: truncated PNG")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_training_image_is_one_line(tmp_path, workers):
    from irtool.errors import ImageError
    from irtool.train.data import Pair, Source, TrainingSet

    dataset = TrainingSet(
        [Source(0, [Pair(tmp_path / "bad.png")] * 4), Source(1, [Pair(tmp_path / "bad.png")] * 4)],
        patch_size=32,
        reader=_broken_reader,
    )
    with pytest.raises(ImageError) as caught:
        train(micro_config(num_workers=workers), tmp_path / "run", dataset=dataset)
    assert str(caught.value) == f"{tmp_path / 'bad.png'}: truncated PNG"


def test_tensorboard_gets_the_logged_scalars_when_installed(tmp_path, monkeypatch):
    """TensorBoard is optional (not a dependency): a stand-in `torch.utils.tensorboard` records what the loop sends."""
    import sys
    import types

    written: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(micro_config(steps=2, ckpt_every=2), tmp_path, dataset=micro_dataset())
    tags = {t for t, _, _ in written}
    assert {"train/loss", "train/lr", "train/loss/noise", "train/weight/lowlight", "closed"} <= tags
    assert [s for t, _, s in written if t == "train/loss"] == [1, 2]


def test_routing_supervision_trains_its_read_out_and_resumes_bit_exactly(tmp_path):
    """route_task_weight: a cross-entropy of each MoCE layer's gate logits (read out linearly) against the task; its
    read-out learns with the network, is kept in the training state (not in the weights) and resumes exactly."""
    config = micro_config(steps=6, ckpt_every=3, route_task_weight=0.5, reweight="none")
    train(config, tmp_path / "straight", dataset=micro_dataset())
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", dataset=micro_dataset(), on_event=stop_at(3))
    train(config, tmp_path / "stopped", dataset=micro_dataset(), resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    sa, sb = (checkpoint.load_state(tmp_path / run / "last.state.pt") for run in ("straight", "stopped"))
    assert sa["readout"].keys() == sb["readout"].keys() and all(
        torch.equal(sa["readout"][k], sb["readout"][k]) for k in sa["readout"]
    )
    assert not any(
        "readout" in k or k.startswith("maps.") for k in load_file(str(tmp_path / "straight" / "last.safetensors"))
    )
    rows = read_log(tmp_path / "straight" / "log.csv")
    # two tasks: the cross-entropy starts near ln 2 and is part of the logged loss
    assert abs(float(rows[0]["route"]) - 0.693) < 0.25
    for r in rows:
        expected = float(r["pixel"]) + 0.1 * float(r["fft"]) + 0.01 * float(r["balance"]) + 0.5 * float(r["route"])
        assert float(r["loss"]) == pytest.approx(expected, rel=1e-4)
    # a state saved without the read-out cannot continue with it
    plain = micro_config(steps=3, ckpt_every=3, reweight="none")
    train(plain, tmp_path / "plain", dataset=micro_dataset())
    (tmp_path / "plain" / "config.json").write_text(
        json.dumps(micro_config(steps=3, ckpt_every=3, reweight="none", route_task_weight=0.5).to_dict())
    )
    with pytest.raises(CheckpointError, match="no routing read-out"):
        train(
            micro_config(steps=3, ckpt_every=3, reweight="none", route_task_weight=0.5),
            tmp_path / "plain",
            dataset=micro_dataset(),
            resume=True,
        )


def test_without_routing_supervision_the_step_is_the_papers(tmp_path):
    """route_task_weight 0 (the default): no read-out, no routing term, the same run as before it existed."""
    from irtool.devices.processes import setup
    from irtool.train.loop import Trainer
    from irtool.train.models import build_network

    config = micro_config(reweight="none")
    trainer = Trainer(config, build_network(config), setup("cpu"), list(config.tasks))
    assert trainer.readout is None and "readout" in trainer.state_dict() and trainer.state_dict()["readout"] is None
    batch = {"lq": torch.rand(2, 3, 32, 32), "gt": torch.rand(2, 3, 32, 32), "task": torch.tensor([0, 1])}
    stats = trainer.step(batch, 1e-3)
    assert stats.route == 0.0


def test_summary_json_is_valid_json_when_a_task_is_absent_from_the_last_batch(tmp_path):
    # one image a batch, two tasks: the task not in the last batch has a NaN loss, which summary.json writes as null
    summary = train(micro_config(steps=2, batch_size=1, ckpt_every=2), tmp_path, dataset=micro_dataset())
    assert any(math.isnan(v) for v in summary["final_task_loss"].values())

    def refuse(word):
        raise AssertionError(f"summary.json holds {word}, not JSON")

    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert None in written["final_task_loss"].values() and written["steps"] == 2


def test_a_training_runs_folder_works_as_weights(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from irtool.cli import app

    run = tmp_path / "run"
    train(micro_config(steps=2, ckpt_every=2), run, dataset=micro_dataset())
    (run / "best.safetensors").write_bytes((run / "last.safetensors").read_bytes())  # as a validated run has
    assert {"last.safetensors", "last.state.pt", "best.safetensors"} <= {p.name for p in run.iterdir()}
    from_folder = irtool.load_model(run, device="cpu").state_dict()
    from_file = irtool.load_model(run / "last.safetensors", device="cpu").state_dict()
    assert from_folder.keys() == from_file.keys() and all(torch.equal(from_folder[k], from_file[k]) for k in from_file)

    Image.new("RGB", (24, 16), (90, 120, 60)).save(tmp_path / "a.png")
    done = CliRunner().invoke(app, ["restore", str(tmp_path / "a.png"), str(tmp_path / "out"), "--weights", str(run)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "a.png").is_file()
