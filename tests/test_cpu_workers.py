"""CPU model workers (irtool.devices.speed.cpu_split, Restorer.cpu_workers): the split is a fixed rule that follows
--threads and torch's count, taken when other work competes for the cores (`cpu_contended`, Linux's run queue);
restoring on several workers (whole images side by side, tiles shared out) gives the outputs of the one-thread path;
the built-in model starts without the meta-device build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_moce
from restore_fixtures import LocalNet, photo

from irtool.archs.moce_ir import VARIANTS
from irtool.devices import speed
from irtool.devices.speed import cpu_split
from irtool.errors import IrtoolError
from irtool.images import files as io
from irtool.restoration import engine, planning
from irtool.restoration.tiled_samples import restore_tiled
from irtool.restoration.tiling import tiled_forward

REPO = Path(__file__).resolve().parents[1]
CPU_CONTENDED = speed.cpu_contended  # the real one, before the fixture below replaces it


@pytest.fixture(autouse=True)
def contended(monkeypatch):
    """Every test here runs as on a busy machine (two workers) unless it says otherwise: the real answer depends on
    what else this machine runs at the moment."""
    monkeypatch.setattr(speed, "cpu_contended", lambda: True)


@pytest.mark.parametrize(
    ("threads", "default", "split"),
    [(0, 1, (1, 1)), (0, 2, (2, 1)), (0, 16, (2, 8)), (1, 16, (1, 1)), (3, 2, (2, 1)), (4, 1, (2, 2))],
)
def test_cpu_split_follows_the_threads_asked_else_torchs_count(threads, default, split):
    assert cpu_split(threads, default) == split


@pytest.mark.parametrize(("threads", "default"), [(0, 2), (0, 16), (4, 1), (1, 16)])
def test_an_idle_machine_gets_one_worker_with_every_thread(threads, default):
    assert cpu_split(threads, default, contended=False) == (1, threads or default)


def test_cpu_workers_use_one_worker_with_every_thread_on_an_idle_machine(monkeypatch):
    monkeypatch.setattr(speed, "cpu_contended", lambda: False)
    before = torch.get_num_threads()
    restorer = engine.Restorer(random_moce(VARIANTS["tiny"], 0), planning.RestoreOptions(threads=4))
    with restorer.cpu_workers() as workers:
        assert workers == restorer.model_workers == 1 and torch.get_num_threads() == 4
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("running", "expected"),
    [([1, 1, 1, 1, 1], False), ([2, 2, 3, 2, 2], True), ([3, 1, 3, 3, 3], False), (["absent"], False)],
)
def test_cpu_contended_reads_the_run_queue(running, expected, tmp_path, monkeypatch):
    """Another runnable task in every sample (the sampling thread counts itself): a moment's spike is not contention,
    and a system without /proc/stat (or without the line) reads as idle."""
    samples = iter(running)
    stat = tmp_path / "stat"

    def sleep(_seconds: float) -> None:  # the next sample's run queue
        value = next(samples)
        stat.write_text("cpu  1 2 3\n" + ("" if value == "absent" else f"procs_running {value}\nprocs_blocked 0\n"))

    sleep(0)
    monkeypatch.setattr(speed.time, "sleep", sleep)
    monkeypatch.setattr(speed, "PROC_STAT", str(stat))
    assert CPU_CONTENDED(samples=len(running)) is expected
    monkeypatch.setattr(speed, "PROC_STAT", str(tmp_path / "none"))
    assert CPU_CONTENDED(samples=1) is False


def test_negative_threads_are_refused():
    with pytest.raises(IrtoolError, match="--threads"):
        planning.RestoreOptions(threads=-1).check()


def test_cpu_workers_set_torchs_threads_for_the_run_and_put_them_back():
    before = torch.get_num_threads()
    restorer = engine.Restorer(random_moce(VARIANTS["tiny"], 0), planning.RestoreOptions(threads=4))
    with restorer.cpu_workers() as workers:
        assert workers == restorer.model_workers == 2 and torch.get_num_threads() == 2
    assert restorer.model_workers == 1 and torch.get_num_threads() == before


def _sum_of_tiles(t: torch.Tensor) -> torch.Tensor:
    return t * 2 + t.mean(dim=(1, 2, 3), keepdim=True)  # depends on the whole tile: its place in the batch matters


def test_tiled_paths_blend_the_same_whatever_maps_the_batches():
    x = torch.rand(1, 3, 90, 130, generator=torch.Generator().manual_seed(0))
    reverse_map = lambda fn, items: [fn(t) for t in items[::-1]][::-1]  # noqa: E731 - computed out of order
    serial, grid = tiled_forward(_sum_of_tiles, x, 48, 12, 1, 2)
    mapped, _ = tiled_forward(_sum_of_tiles, x, 48, 12, 1, 2, map_batches=reverse_map)
    assert len(grid) > 4 and torch.equal(serial, mapped)
    samples = photo(90, 130, seed=3)
    common = dict(tile=48, overlap=12, multiple=8, batch=2, device=torch.device("cpu"), out_dtype=np.dtype(np.uint8))
    one, tiles, _ = restore_tiled(samples, False, lambda t: t * 0.9, **common)
    other, _, _ = restore_tiled(samples, False, lambda t: t * 0.9, map_batches=reverse_map, **common)
    assert tiles > 4 and np.array_equal(one, other)


def _restore_folder(src: Path, out: Path, threads: int, whole_pixels: int) -> list:
    restorer = engine.Restorer(
        random_moce(VARIANTS["tiny"], 1), planning.RestoreOptions(threads=threads, tile=48, tile_overlap=8)
    )
    restorer.whole_pixels = whole_pixels  # images above it go through the tiled-samples path, tiles shared out
    return list(engine.restore_files(planning.plan([str(src)], out), restorer))


def test_two_workers_restore_a_folder_as_one_thread_does(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # 96x128 goes through the tiled-samples path; 48x64 and 40x56 are tiled from floats; 40x40 is whole
    sizes = [(48, 64), (40, 56), (96, 128), (48, 64), (40, 40)]
    for n, (h, w) in enumerate(sizes):
        io.write_image(src / f"{n}.png", io.from_array(photo(h, w, seed=n)))
    (src / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # one bad file fails alone, in its place
    serial = _restore_folder(src, tmp_path / "serial", 1, 96 * 96)
    parallel = _restore_folder(src, tmp_path / "parallel", 2, 96 * 96)
    assert [r.input for r in parallel] == [r.input for r in serial]
    assert [r.status for r in parallel] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert [r.tiles for r in parallel] == [r.tiles for r in serial]
    assert parallel[2].tiles > 1 and parallel[0].tiles > 1 and parallel[5].tiles == 1
    assert [r.experts for r in parallel] == [r.experts for r in serial]
    for name in [f"{n}.png" for n in range(len(sizes))]:
        a = io.read_image(tmp_path / "serial" / name).pixels.astype(int)
        b = io.read_image(tmp_path / "parallel" / name).pixels.astype(int)
        # float outputs within 1e-5 (the thread layout reorders additions): 8-bit samples at most 1 level apart
        assert np.abs(a - b).max() <= 1


def test_the_built_in_model_loads_without_a_meta_device_build():
    """The meta device's first division imports torch._dynamo (1-3 s of every run's start)."""
    code = (
        "import sys\nfrom irtool.restoration.engine import Restorer\nfrom irtool.restoration.planning import "
        "RestoreOptions\nRestorer.load(RestoreOptions(device='cpu'))\nprint('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


def test_tiles_shared_out_give_the_one_thread_floats_within_1e_5():
    restorer = engine.Restorer(random_moce(VARIANTS["tiny"], 2), planning.RestoreOptions(threads=2, tile=48))
    image = io.from_array(photo(80, 112, seed=4))
    serial = restorer.restore([image])[0]
    with restorer.cpu_workers():
        parallel = restorer.restore([image])[0]
    assert parallel.tiles == serial.tiles > 1 and parallel.experts == serial.experts
    assert np.abs(parallel.rgb - serial.rgb).max() < 1e-5


def test_interrupting_a_two_worker_run_writes_every_image_restored_and_nothing_partial(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for n in range(6):
        io.write_image(src / f"{n}.png", io.from_array(photo(24, 24, seed=n)))

    class Interrupted(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            if len(self.calls) >= 3:  # on a worker thread: reaches the caller through the batch's future
                raise KeyboardInterrupt
            return super().run(x, routing)

    restorer = engine.Restorer(Interrupted(), planning.RestoreOptions(threads=2))
    threads = torch.get_num_threads()
    heard = []
    with pytest.raises(KeyboardInterrupt):
        for _ in engine.restore_files(planning.plan([str(src)], tmp_path / "out"), restorer, on_written=heard.append):
            pass
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    # 3 restorations pass (4 when both workers check the count at once), then the run stops
    assert 1 <= len(written) <= 4 and written == sorted(Path(r.output).name for r in heard)
    for name in written:  # complete files only: atomic writes, no temporaries left
        assert io.read_image(tmp_path / "out" / name).width == 24
    assert torch.get_num_threads() == threads and restorer.model_workers == 1  # the workers are gone
