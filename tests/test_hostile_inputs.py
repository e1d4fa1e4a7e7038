"""Issue 14, case by case: nothing a folder can hold stops, hangs or exhausts irtool, and the rough edges a newcomer
hits. (The whole hostile corpus in one run is tests/test_hostile_corpus.py.)"""

from __future__ import annotations

import argparse
import io as stdio
import json
import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_moce
from hostile_corpus import _gif_claiming, _os2_bmp, _tiff_slong
from PIL import Image as PILImage
from restore_fixtures import LocalNet, photo, tiny_checkpoint, tree_hashes
from typer.testing import CliRunner

import irtool
from irtool import finite_json
from irtool.archs.moce_ir import VARIANTS
from irtool.cli import app
from irtool.errors import CheckpointError, ImageError, UnsafeCheckpointError
from irtool.images import files as io
from irtool.images import memory, safe_paths
from irtool.loading import HARMLESS_GLOBALS, read_checkpoint
from irtool.restoration import planning
from irtool.restoration.engine import Restorer, restore_files
from irtool.restoration.planning import RestoreOptions, plan

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


def save(path: Path, array: np.ndarray, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = stdio.BytesIO()
    PILImage.fromarray(array).save(
        buf,
        format=fmt
        or path.suffix.lstrip(".").upper().replace("JPG", "JPEG").replace("TIF", "TIFF").replace("TIFFF", "TIFF"),
        **kwargs,
    )
    path.write_bytes(buf.getvalue())
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------------------------
# Whole-run failures: loops, FIFOs, devices


def _hostile_folder(root: Path) -> Path:
    save(root / "good.png", photo(16, 24, seed=1))
    save(root / "sub" / "also.png", photo(16, 24, seed=2))
    os.symlink("loop.png", root / "loop.png")  # a link to itself
    os.symlink("..", root / "sub" / "up")  # a folder loop
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink("gone.png", root / "broken.png")
    os.mkfifo(root / "pipe.png")
    return root


def test_planning_never_follows_a_loop_nor_opens_special_files(tmp_path):
    root = _hostile_folder(tmp_path / "in")
    done: list = []
    worker = threading.Thread(
        target=lambda: done.append(plan([str(root), str(root / "**" / "*")], tmp_path / "out")), daemon=True
    )
    worker.start()
    worker.join(20)
    assert done, "planning hung"
    planned = done[0]
    runnable = sorted(str(Path(j.src).relative_to(root)) for j in planned if not j.error)
    assert runnable == ["good.png", "good.png", "sub/also.png", "sub/also.png"]  # once per input, loops not followed
    refused = {Path(j.src).name: j.error for j in planned if j.error}
    assert "loop" in refused["loop.png"] and "broken" in refused["broken.png"]
    assert "character device" in refused["zero.png"] and "FIFO" in refused["pipe.png"]
    assert all(str(root) in e for e in refused.values())


def test_a_glob_over_a_looping_tree_ends_and_lists_each_file_once(tmp_path):
    root = _hostile_folder(tmp_path / "shoot")
    matches = safe_paths.glob_paths(str(root / "**" / "*"))
    assert len(matches) == len(set(matches)) and all("up" not in p.relative_to(root).parts[:-1] for p in matches)
    # 'shoot/**/*' matches the folder 'sub' and the file in it: restored once, not twice
    found, failed = planning.expand_inputs([str(root / "**" / "*")])
    names = [str(f.relative_to(root)) for _, f, _ in found]
    assert sorted(names) == ["good.png", "sub/also.png"]


def test_reading_a_fifo_a_device_or_a_socket_is_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    sock.close()
    for name, kind in (("pipe.png", "FIFO"), ("zero.png", "character device"), ("sock.png", "socket")):
        with pytest.raises(ImageError, match=kind) as info:
            io.read_image(tmp_path / name)  # a FIFO would block here forever if it were opened
        assert str(tmp_path / name) in str(info.value)


def test_a_fifo_beside_a_good_image_does_not_stop_the_run(tmp_path, checkpoint):
    save(tmp_path / "in" / "good.png", photo(16, 24, seed=1))
    os.mkfifo(tmp_path / "in" / "pipe.png")
    os.symlink("/dev/zero", tmp_path / "in" / "zero.png")
    result = invoke("restore", tmp_path / "in", tmp_path / "out", "-w", checkpoint, "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    status = {Path(r["input"]).name: r["status"] for r in map(json.loads, result.stdout.splitlines())}
    assert status == {"good.png": "ok", "pipe.png": "failed", "zero.png": "failed"}
    assert io.read_image(tmp_path / "out" / "good.png").width == 24


# --------------------------------------------------------------------------------------------------------------------
# Memory: sizes from headers, a limit from the machine, large images from their samples


def test_every_format_gives_its_size_before_decoding(tmp_path):
    gif = tmp_path / "huge_gif.png"
    gif.write_bytes(_gif_claiming(20000, 20000))  # 0.3 KB that Pillow would inflate to 400 MB
    with pytest.raises(ImageError, match=r"20000x20000 pixels \(400 MP\) is over the 100 MP limit"):
        io.read_image(gif, max_megapixels=100)
    slong = tmp_path / "slong.tiff"
    slong.write_bytes(_tiff_slong(20000, 20000))  # sizes in SLONG tags: a size, not "corrupt"
    with pytest.raises(ImageError, match="over the 100 MP limit"):
        io.read_image(slong, max_megapixels=100)
    os2 = tmp_path / "os2.bmp"
    os2.write_bytes(_os2_bmp(20, 12, seed=3))  # 16-bit sizes: 20x12, not "4947906 MP"
    image = io.read_image(os2)
    assert (image.width, image.height) == (20, 12)


def test_the_default_megapixel_limit_comes_from_available_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 24 << 30)
    assert memory.default_max_megapixels() == int((24 << 30) * 0.5 / memory.TILED_BYTES_PER_PIXEL / 1e6)
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * memory.TILED_BYTES_PER_PIXEL * 2 * 10**6)
    assert memory.default_max_megapixels() == 100
    big = tmp_path / "big.png"
    big.write_bytes(_png_claiming_size(12000, 12000))
    with pytest.raises(ImageError, match="over the 100 MP limit"):
        io.read_image(big)  # no max_megapixels: the machine's


def _png_claiming_size(width: int, height: int) -> bytes:
    from hostile_corpus import _png_claiming

    return _png_claiming(width, height)


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_large_images_restore_from_their_samples_as_the_float_tiled_path_does(gray, dtype):
    pixels = photo(150, 230, seed=3).astype(dtype) * (257 if dtype == np.uint16 else 1)
    image = io.from_array(pixels[..., 0] if gray else pixels)
    restorer = Restorer(
        random_moce(VARIANTS["tiny"], 0),
        RestoreOptions(tile=64, tile_overlap=16, route_size=48),
        device=torch.device("cpu"),
    )
    tiled_float = io.to_array(image, restorer.restore([image])[0].rgb)
    image._rgb = None
    large = restorer.restore_large(image)
    assert image._rgb is None, "the large path made a float copy of the whole image"
    assert large.samples.dtype == dtype and large.tiles == 15 and large.routing == "downscaled"
    diff = np.abs(large.samples.astype(np.int64) - tiled_float.astype(np.int64))
    # the same float result up to summation order (~1e-6), so at most one quantization step, rarely
    assert diff.max() <= 1 and (diff > 0).mean() < (1e-3 if dtype == np.uint8 else 2e-2)


def test_restore_files_sends_images_over_the_memory_budget_through_tiles(tmp_path):
    save(tmp_path / "in" / "a.png", photo(70, 90, seed=4))
    save(tmp_path / "in" / "b.jpg", photo(70, 90, seed=5), quality=95)
    restorer = Restorer(LocalNet(), RestoreOptions(), device=torch.device("cpu"))
    restorer.whole_pixels = 5000  # as if this machine had room for 5000 pixels in one piece
    reports = list(restore_files(plan([str(tmp_path / "in")], tmp_path / "out"), restorer))
    assert [r.status for r in reports] == ["ok", "ok"] and all(r.tiles == 1 or r.tile_size for r in reports)
    assert all("tiles" in " ".join(r.warnings) for r in reports)
    whole = Restorer(LocalNet(), RestoreOptions(), device=torch.device("cpu"))
    for name in ("a.png", "b.jpg"):
        image = io.read_image(tmp_path / "in" / name)
        expected = io.to_array(image, whole.restore([image])[0].rgb)
        got = io.read_image(tmp_path / "out" / name).pixels
        # LocalNet sees only 3 px around each pixel: tiles give the whole-image result (JPEG re-encoding aside)
        tolerance = 1 if name.endswith("png") else 12
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


def test_a_metadata_config_is_tried_on_the_meta_device_before_anything_is_allocated(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from irtool.archs import ARCHS

    model = random_moce(VARIANTS["tiny"], 0)
    claimed = {**model.config.to_dict(), "dim": 4096, "num_blocks": [99, 99, 99, 99]}
    path = tmp_path / "liar.safetensors"
    save_file(model.state_dict(), str(path), metadata={"irtool.arch": "moce_ir", "irtool.config": json.dumps(claimed)})
    spec = ARCHS["moce_ir"]
    built_on: list[tuple[int, str]] = []
    real_build = spec.build

    def recording_build(config):
        built_on.append((config.dim, torch.empty(0).device.type))
        return real_build(config)

    from dataclasses import replace

    monkeypatch.setitem(ARCHS, "moce_ir", replace(spec, build=recording_build))
    loaded = irtool.load_model(path, device="cpu")
    assert loaded.config.dim == 16  # the tensors win
    assert (4096, "meta") in built_on and all(dev == "meta" for dim, dev in built_on if dim == 4096)


# --------------------------------------------------------------------------------------------------------------------
# Silent wrong results


def test_animations_and_multi_page_files_are_refused_not_cut(tmp_path):
    frames = [PILImage.fromarray(photo(16, 24, seed=s)) for s in range(3)]
    cases = {
        "a.png": ("PNG", "animated PNG with 3 frames"),
        "a_gif.png": ("GIF", "animated GIF with 3 frames"),
        "a.webp": ("WEBP", "animated WebP with 3 frames"),
        "a.tiff": ("TIFF", "multi-page TIFF with 3 frames"),
    }
    for name, (fmt, says) in cases.items():
        first = frames[0].convert("P") if fmt == "GIF" else frames[0]
        rest = [f.convert("P") if fmt == "GIF" else f for f in frames[1:]]
        buf = stdio.BytesIO()
        first.save(buf, format=fmt, save_all=True, append_images=rest)
        (tmp_path / name).write_bytes(buf.getvalue())
        with pytest.raises(ImageError) as info:
            io.read_image(tmp_path / name)
        assert says in str(info.value) and "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_rgba_tiff_is_turned_by_its_orientation_exactly_once(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 4), dtype=np.uint8)
    save(tmp_path / "o.tiff", stored, "TIFF", tiffinfo={0x0112: orientation})
    image = io.read_image(tmp_path / "o.tiff")
    assert np.array_equal(image.pixels, io.apply_orientation(stored[..., :3], orientation))
    assert np.array_equal(image.alpha, io.apply_orientation(stored[..., 3], orientation))


def test_weights_holding_nan_or_inf_are_refused_at_load(tmp_path):
    sd = random_moce(VARIANTS["tiny"], 0).state_dict()
    key = sorted(k for k, v in sd.items() if v.is_floating_point())[3]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or Inf") as info:
        irtool.load_model(tmp_path / "nan.pth", device="cpu")
    assert key in str(info.value)
    result = invoke("inspect", tmp_path / "nan.pth")
    assert result.exit_code == 1 and "NaN or Inf" in result.stderr


def test_json_output_is_always_valid_json():
    report = planning.RestoreReport(
        input="a.png", confidence=float("nan"), gates=[[float("inf"), 0.5]], seconds=float("-inf")
    )
    text = finite_json.dumps(report.to_json())
    back = json.loads(text)  # strict JSON: bare NaN/Infinity would not parse in other languages
    assert "NaN" not in text and "Infinity" not in text
    assert back["confidence"] is None and back["gates"] == [[None, 0.5]] and back["seconds"] is None


class _DtypeRegistryMutation:
    def __reduce__(self):
        import numpy.dtypes

        return (numpy.dtypes._add_dtype_helper, (np.dtype("float32").__class__, "irtool_pwned"))


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


class _Eval:
    def __reduce__(self):
        import builtins

        return (builtins.eval, ("1+1",))


class _Getattr:
    def __reduce__(self):
        import builtins

        return (builtins.getattr, ("text", "upper"))


def test_the_safe_unpickler_allows_exactly_the_listed_globals(tmp_path):
    tensors = {"w": torch.zeros(2)}
    # what official and common checkpoints hold beside tensors: every one loads without --trust-checkpoint
    harmless = {
        "namespace": argparse.Namespace(lr=2e-4, name="aio5"),
        "ordered": OrderedDict(a=1),
        "float64": np.float64(31.2),
        "float32": np.float32(1.5),
        "int64": np.int64(7),
        "bool": np.bool_(True),
        "array": np.zeros((2, 3), np.float32),
        "uint8_array": np.arange(4, dtype=np.uint8),
        "path": Path("runs/aio5"),
    }
    for name, value in harmless.items():
        torch.save({"state_dict": tensors, "extra": value}, tmp_path / f"{name}.pth")
        obj, _ = read_checkpoint(tmp_path / f"{name}.pth")
        assert torch.equal(obj["state_dict"]["w"], tensors["w"]), name
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / f"{name}.pth")
        assert set(wanted) <= HARMLESS_GLOBALS, (name, wanted)
    # the list is exact names, no prefixes
    assert not any(g.endswith(".") or g.endswith("*") for g in HARMLESS_GLOBALS)
    assert "numpy.dtypes._add_dtype_helper" not in HARMLESS_GLOBALS
    refused = {"dtype_helper": _DtypeRegistryMutation(), "system": _System(), "eval": _Eval(), "getattr": _Getattr()}
    before = set(np.sctypeDict) if hasattr(np, "sctypeDict") else set()
    for name, value in refused.items():
        torch.save({"state_dict": tensors, "extra": value}, tmp_path / f"{name}.pth")
        with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
            read_checkpoint(tmp_path / f"{name}.pth")
    assert (
        not hasattr(np.dtypes, "irtool_pwned")
        and (set(np.sctypeDict) if hasattr(np, "sctypeDict") else set()) == before
    )


def test_a_legacy_pickled_checkpoint_is_named_as_such_without_escape_codes(tmp_path):
    sd = random_moce(VARIANTS["tiny"], 0).state_dict()
    torch.save(
        {"state_dict": sd, "args": argparse.Namespace(lr=1)},
        tmp_path / "old_ok.pth",
        _use_new_zipfile_serialization=False,
    )
    assert irtool.load_model(tmp_path / "old_ok.pth", device="cpu").config.dim == 16
    torch.save({"state_dict": sd, "x": _System()}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(tmp_path / "old.pth")
    message = str(info.value)
    assert "legacy" in message and "posix.system" in message and "\x1b" not in message and "corrupt" not in message


def test_a_254_character_file_name_restores(tmp_path, checkpoint):
    name = "n" * 250 + ".png"
    save(tmp_path / "in" / name, photo(16, 24, seed=1))
    result = invoke("restore", tmp_path / "in", tmp_path / "out", "-w", checkpoint, "-q")
    assert result.exit_code == 0, result.output
    assert io.read_image(tmp_path / "out" / name).width == 24
    too_long = invoke("restore", tmp_path / "in", tmp_path / "out2", "-w", checkpoint, "--suffix", "_restored", "-q")
    assert too_long.exit_code == 1 and "255 bytes" in too_long.stderr and "Traceback" not in too_long.output


def test_tiff_sample_types_get_messages_that_say_what_they_are(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "signed.tiff", np.arange(48, dtype=np.int16).reshape(6, 8))
    with pytest.raises(ImageError, match="signed 16-bit integer samples"):
        io.read_image(tmp_path / "signed.tiff")
    bilevel = photo(16, 24, seed=2)[..., 0] > 128
    PILImage.fromarray(bilevel).save(tmp_path / "bilevel.tiff")  # mode "1"
    image = io.read_image(tmp_path / "bilevel.tiff")
    assert image.gray and image.dtype == np.uint8 and set(np.unique(image.pixels)) <= {0, 255}
    assert any("1-bit" in w for w in image.warnings)


# --------------------------------------------------------------------------------------------------------------------
# Newcomer rough edges


def test_restore_says_what_is_missing_and_writes_a_named_output_file(tmp_path, checkpoint):
    save(tmp_path / "rainy.jpg", photo(16, 24, seed=1), quality=95)
    missing = invoke("restore", tmp_path / "rainy.jpg")
    assert missing.exit_code == 2 and "missing the output folder" in missing.stderr
    to_file = invoke("restore", tmp_path / "rainy.jpg", tmp_path / "restored.png", "-w", checkpoint, "-q")
    assert to_file.exit_code == 0, to_file.output
    assert (tmp_path / "restored.png").is_file() and io.read_image(tmp_path / "restored.png").format == "png"
    flag_value = invoke("restore", tmp_path / "rainy.jpg", tmp_path / "out", "--skip-existing", "true")
    assert flag_value.exit_code == 2 and "take no value" in flag_value.stderr
    help_text = invoke("restore", "--help").output
    assert "--skip-existing" in help_text and "<bool>" not in help_text.split("--skip-existing")[1].splitlines()[0]


def test_rerunning_a_restore_reports_existing_outputs_once_not_as_failures(tmp_path, checkpoint):
    for n in range(3):
        save(tmp_path / "in" / f"{n}.png", photo(16, 24, seed=n))
    assert invoke("restore", tmp_path / "in", tmp_path / "out", "-w", checkpoint, "-q").exit_code == 0
    before = tree_hashes(tmp_path / "out")
    again = invoke("restore", tmp_path / "in", tmp_path / "out", "-w", checkpoint)
    assert again.exit_code == 0 and "failed" not in again.stderr and "error" not in again.stderr
    assert again.stderr.count("--skip-existing") == 1 and "3 left as they were" in again.stderr
    assert tree_hashes(tmp_path / "out") == before


def test_training_weights_get_the_mode_any_new_file_gets(tmp_path):
    from irtool.train.checkpoint import BEST, save_weights

    mask = os.umask(0o022)
    os.umask(mask)
    path = save_weights(tmp_path / BEST, random_moce(VARIANTS["tiny"], 0), {"step": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not the temp file's owner-only 0600
