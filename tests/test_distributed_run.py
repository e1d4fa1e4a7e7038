"""`irtool restore` and `irtool eval` on two processes (torchrun and `--gpu 0,1 --device cpu`, gloo on CPU), against
the same commands in one process: outputs byte for byte, reports in input order, failures isolated per image, a
SIGKILLed rank that loses no finished output and a --skip-existing rerun that completes, start checks that name
the rank and the path, eval figures equal to one process's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_data import make_promptir_layout
from PIL import Image
from restore_fixtures import photo, tiny_checkpoint, tree_hashes
from typer.testing import CliRunner

from irtool import shard
from irtool.cli import app
from irtool.distributed_run import _without_gpu_flags
from irtool.images import files as io
from irtool.restoration.planning import plan

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The in-process reference runs use one thread, as each worker does (torchrun sets OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


def _env(**more: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **more}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def torchrun(*args: object, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "irtool",
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def irtool(*args: object, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irtool", *map(str, args)],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def mixed_folder(root: Path) -> Path:
    """Sizes from thumbnails to one large image, several formats, a 16-bit PNG, a subfolder and one broken file."""
    src = root / "in"
    save(src / "big.png", photo(96, 128, seed=1))
    for i in range(6):
        save(src / f"small{i}.png", photo(16, 24, seed=10 + i))
    save(src / "trip" / "b.jpg", photo(24, 32, seed=2), quality=95)
    save(src / "trip" / "c.webp", photo(16, 32, seed=3), lossless=True)
    deep = photo(24, 24, seed=4).astype(np.uint16) * 257
    (src / "trip" / "deep.png").write_bytes(io.encode_image(io.from_array(deep), fmt="png")[0])
    (src / "trip" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing more")
    return src


# --------------------------------------------------------------------------------------------------------------------
# Sharding (no processes)


def test_shards_balance_pixels_not_files_and_are_deterministic():
    weights = [50_000_000] + [10_000] * 1000  # one 50 MP photo and a thousand thumbnails
    owner = shard.balance(weights, 2)
    assert owner[0] == 0 and set(owner[1:]) == {1}  # the thousand thumbnails (10 MP) do not reach the photo's 50 MP
    assert shard.balance([50_000_000] + [10_000] * 6000, 2).count(0) == 1 + 500  # 60 MP of thumbnails: 55 MP each
    assert shard.balance(weights, 2) == owner
    even = shard.balance([100, 100, 100, 100, 60, 40], 2)  # ties go to the rank with fewer items, then the lower rank
    assert even == [0, 1, 0, 1, 0, 1]
    assert shard.balance([0, 0, 0, 0], 3) == [0, 1, 2, 0]  # unreadable headers spread by count
    loads, counts = [0, 0], [0, 0]
    assert shard.balance([10], 2, loads, counts) == [0] and shard.balance([10], 2, loads, counts) == [1]
    assert loads == [10, 10] and counts == [1, 1]


def test_gpu_lists_and_the_worker_command_line():
    assert shard.parse_gpus(None) is None and shard.parse_gpus("2") == [2] and shard.parse_gpus("0,1, 3") == [0, 1, 3]
    for bad in ("x", "0,0", "-1", ","):
        with pytest.raises(shard.IrtoolError, match="--gpu"):
            shard.parse_gpus(bad)
    argv = ["restore", "in", "out", "--gpu", "0,1", "-d", "cuda:3", "--json"]
    assert _without_gpu_flags(argv, on_cpu=False, device_flags=("--device", "-d")) == [
        "restore",
        "in",
        "out",
        "--json",
        "--device",
        "cuda",
    ]
    assert _without_gpu_flags(["eval", "--dataset", "rain100l", "--gpu=0,1", "--device", "cpu"], on_cpu=True) == [
        "eval",
        "--dataset",
        "rain100l",
        "--device",
        "cpu",
    ]
    bad = runner.invoke(app, ["restore", "a.png", "out", "--gpu", "zero"])
    assert bad.exit_code == 2 and "--gpu" in bad.output


# --------------------------------------------------------------------------------------------------------------------
# restore on two processes


def test_two_ranks_restore_a_mixed_folder_like_one_process(tmp_path, checkpoint):
    src = mixed_folder(tmp_path)
    single = runner.invoke(app, ["restore", str(src), str(tmp_path / "one"), "-w", str(checkpoint), "--json"])
    assert single.exit_code == 1  # the broken file
    result = torchrun("restore", "in", "two", "-w", checkpoint, "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr

    assert tree_hashes(tmp_path / "two") == tree_hashes(tmp_path / "one")  # every output, byte for byte, nothing else
    one, two = json_lines(single.stdout), json_lines(result.stdout)
    assert [r["input"] for r in two] == [
        str(Path("in") / Path(r["input"]).relative_to(src)) for r in one
    ]  # input order
    assert [r["status"] for r in two] == [r["status"] for r in one]
    assert [r["experts"] for r in two] == [r["experts"] for r in one]
    # the broken file failed on its rank alone; both ranks restored everything else
    runnable = plan([str(src)], tmp_path / "elsewhere")
    owner = shard.balance([shard.pixel_count(j.src) for j in runnable], 2)
    broken_rank = owner[[j.src.name for j in runnable].index("broken.png")]
    assert owner.count(broken_rank) > 1 and set(owner) == {0, 1}  # its rank had other files to restore too
    statuses = {Path(r["input"]).name: r["status"] for r in two}
    assert statuses.pop("broken.png") == "failed" and set(statuses.values()) == {"ok"}
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "restored 10 of 11 images" in result.stderr and "1 failed" in result.stderr
    assert result.stdout.count("\n") == len(one)  # one JSON stream, from rank 0 alone


def test_gpu_list_with_device_cpu_starts_the_workers_itself(tmp_path, checkpoint):
    src = tmp_path / "in"
    for i in range(4):
        save(src / f"{i}.png", photo(16 + 8 * i, 24, seed=i))
    assert runner.invoke(app, ["restore", str(src), str(tmp_path / "one"), "-w", str(checkpoint), "-q"]).exit_code == 0
    result = irtool("restore", "in", "two", "-w", checkpoint, "--gpu", "0,1", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "two") == tree_hashes(tmp_path / "one")
    assert "restored 4 of 4 images" in result.stderr and "Traceback" not in result.stderr
    assert "0.png" in result.stdout and "3.png" in result.stdout  # rank 0's one closing table


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the worker with RANK=`rank` among the processes started with IRTOOL_TEST_TAG=`tag`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("IRTOOL_TEST_TAG") == tag and env.get("RANK") == str(rank) and "LOCAL_RANK" in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker to kill through /proc (Linux)")
def test_a_sigkilled_rank_loses_nothing_finished_and_a_skip_existing_rerun_completes(tmp_path, checkpoint):
    src = tmp_path / "in"
    for i in range(16):
        save(src / f"{i:02d}.png", photo(32, 32, seed=i))
    assert runner.invoke(app, ["restore", str(src), str(tmp_path / "one"), "-w", str(checkpoint), "-q"]).exit_code == 0
    reference = tree_hashes(tmp_path / "one")
    owner = shard.balance([32 * 32] * 16, 2)
    rank1 = {f"{i:02d}.png" for i in range(16) if owner[i] == 1}

    tag = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "irtool",
           "restore", "in", "two", "-w", str(checkpoint), "--json"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(IRTOOL_TEST_TAG=tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill rank 1 once it has written one of its files
            done = {p.name for p in (tmp_path / "two").glob("*.png")} if (tmp_path / "two").is_dir() else set()
            if done & rank1:
                break
            time.sleep(0.01)
        pid = _rank_pid(tag, 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0

    written = tree_hashes(tmp_path / "two")
    assert written and all(reference[name] == digest for name, digest in written.items() if not name.startswith("."))
    reports = json_lines(stdout)
    # every input reported once
    assert sorted(Path(r["input"]).name for r in reports) == sorted(reference), stderr[-3000:]
    unfinished = [r for r in reports if r["status"] == "failed"]
    assert unfinished and all("--skip-existing" in r["error"] for r in unfinished)
    # rank 1 died; torchrun then stopped rank 0 (SIGTERM), which finished its writes in flight and said what was left
    assert any(Path(r["input"]).name in rank1 for r in unfinished)
    for r in unfinished:
        if Path(r["input"]).name in rank1:
            assert "not restored (rank 1 died: no heartbeat for" in r["error"], r["error"]
        else:
            assert "not restored (rank 0 was stopped by SIGTERM)" in r["error"], r["error"]
    assert all((tmp_path / "two" / Path(r["input"]).name).exists() == (r["status"] == "ok") for r in reports)

    missing = set(reference) - set(written)
    rerun = irtool(
        "restore",
        "in",
        "two",
        "-w",
        checkpoint,
        "--skip-existing",
        "--gpu",
        "0,1",
        "--device",
        "cpu",
        "--json",
        cwd=tmp_path,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert tree_hashes(tmp_path / "two") == reference  # complete, and no temp or marker file left behind
    statuses = {Path(r["input"]).name: r["status"] for r in json_lines(rerun.stdout)}
    assert missing and {n for n, s in statuses.items() if s == "ok"} == missing  # only what was missing
    assert {n for n, s in statuses.items() if s == "skipped"} == set(reference) - missing


def test_ranks_that_cannot_see_the_folders_stop_the_run_at_start_naming_rank_and_path(tmp_path, checkpoint):
    # three "machines" with the same relative paths: node1 lacks the input, node2 has its own output folder
    for node in ("node0", "node2"):
        save(tmp_path / node / "in" / "a.png", photo(16, 16))
    (tmp_path / "node1").mkdir()
    script = tmp_path / "worker.sh"
    script.write_text(
        f'cd "{tmp_path}/node$RANK" && exec "{sys.executable}" -m irtool restore in out -w "{checkpoint}" -q\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "3",
        "--no-python",
        "sh",
        str(script),
    ]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr  # rank 0's line; the other ranks print nothing
    first, second = errors[0].removeprefix("error: ").split(" | ")
    assert first.startswith("rank 1 (host ") and "cannot see the input in (rank 0 can)" in first
    assert second.startswith("rank 2 (host ") and "cannot see the output folder out that rank 0 writes to" in second
    assert not (tmp_path / "node0" / "out" / "a.png").exists() and not list((tmp_path / "node0" / "out").iterdir())
    assert not (tmp_path / "node2" / "out").exists()


def test_a_rank_that_cannot_load_the_model_fails_its_files_and_the_other_rank_finishes(tmp_path, checkpoint):
    # two "machines" sharing the output folder, but only node0 has the weights file (a relative --weights path)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    for node in (node0, node1):
        for i in range(4):
            save(node / "in" / f"{i}.png", photo(16, 16 + 8 * i, seed=i))
    (node0 / "out").mkdir()
    (node1 / "out").symlink_to(node0 / "out")
    shutil.copy(checkpoint, node0 / "tiny.pth")
    script = tmp_path / "worker.sh"
    script.write_text(
        f'cd "{tmp_path}/node$RANK" && exec "{sys.executable}" -m irtool restore in out -w tiny.pth --json\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--no-python",
        "sh",
        str(script),
    ]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    reports = json_lines(result.stdout)
    owner = shard.balance([16 * (16 + 8 * i) for i in range(4)], 2)
    assert [Path(r["input"]).name for r in reports] == [f"{i}.png" for i in range(4)]
    for i, r in enumerate(reports):
        if owner[i] == 0:
            assert r["status"] == "ok" and (node0 / "out" / f"{i}.png").is_file()
        else:
            assert r["status"] == "failed" and "not restored (rank 1 (host " in r["error"] and "tiny.pth" in r["error"]
            assert not (node0 / "out" / f"{i}.png").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == owner.count(1) and "restored 2 of 4 images" in result.stderr


# --------------------------------------------------------------------------------------------------------------------
# eval on two processes


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in ("seconds", "seconds_per_image", "started")}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_eval_on_two_ranks_equals_one_rank(tmp_path, checkpoint):
    make_promptir_layout(tmp_path / "data", n=3)  # dehaze, derain and the three shared-stream noise levels
    args = ["eval", "-w", checkpoint, "--data-root", "data", "--setting", "aio3", "--reported", "moce_ir.aio3", "-q"]
    single = irtool(*args, "--json-file", "one.json", "--csv", "one.csv", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    result = torchrun(*args, "--json-file", "two.json", "--csv", "two.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert _without_timing(a) == _without_timing(b)  # bit-identical per-image scores, means, average, usage
    assert b["complete"] and sum(len(d["images"]) for d in b["datasets"]) == 15
    assert b["datasets"][0]["usage"]["counts"] == a["datasets"][0]["usage"]["counts"]

    def rows(name):
        lines = (tmp_path / f"{name}.csv").read_text().splitlines()
        seconds = lines[0].split(",").index("seconds")
        return [[c for k, c in enumerate(line.split(",")) if k != seconds] for line in lines]

    assert rows("one") == rows("two")
    assert "32.73/0.917" in result.stdout and all(
        d["dataset"] in result.stdout for d in a["datasets"]
    )  # rank 0's table


def test_stop_signals_are_held_across_nested_entries_and_catch_a_sigterm_while_held():
    """A rank holds SIGTERM/SIGINT from its start to its close, and its loops enter them again: an inner exit must
    not drop the handler (a SIGTERM while rank 0 loaded its model once killed it before it reported anything)."""
    from irtool.distributed_run import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    held = StopSignals()
    with held:
        with held:
            pass
        assert signal.getsignal(signal.SIGTERM) == held._handle  # the outer hold is still in force
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while held.signal is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert held.name == "SIGTERM" and held.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_rank_0_stopped_before_its_loop_restores_nothing_more_and_reports_every_item():
    """A stop that came while rank 0 was still loading: its own share is not started, the loop still ends."""
    import threading
    from types import SimpleNamespace

    from irtool.distributed_run import StopSignals, _Gather

    held = StopSignals()
    held.signal = signal.SIGTERM
    started = threading.Event()

    def own(emit, stop):
        if not stop.is_set():
            started.set()

    gather = _Gather(channel=None, ctx=SimpleNamespace(world_size=1), signals=held, working={0})  # type: ignore[arg-type]
    assert list(gather.run(own, lambda message: None))
    assert not started.is_set()
    assert gather.why(0) == "was stopped by SIGTERM"
