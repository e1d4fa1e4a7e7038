"""The restore engine: tiling equals whole images for a local net, tiles share the whole image's routing,
out-of-memory falls back to tiles, reduced-precision NaN is redone in fp32, batches equal single images,
job planning rules, the default model chain, and the Python API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_moce
from restore_fixtures import LOCAL_SPEC, LocalNet, photo, tiny_checkpoint, tree_hashes

import irtool
from irtool import loading
from irtool.archs.lora_ir import LoRARouting
from irtool.archs.moce_ir import VARIANTS
from irtool.archs.spec import Classifier, RoutingReport
from irtool.devices import policy
from irtool.errors import IrtoolError, WeightsNotFoundError
from irtool.images import files as io
from irtool.restoration import engine, planning
from irtool.weights import catalogue


def as_image(array: np.ndarray) -> io.Image:
    return io.from_array(array)


def local_whole(net: LocalNet, image: io.Image) -> np.ndarray:
    """The engine's whole-image result (the reference tiles must reproduce)."""
    outcome = engine.Restorer(net, planning.RestoreOptions()).restore([image])[0]
    assert outcome.tiles == 1 and outcome.routing == "whole"
    return outcome.rgb


def test_tiled_restore_equals_whole_image_for_a_local_network():
    net = LocalNet()
    image = as_image(photo(100, 140, seed=1))
    tiled = engine.Restorer(net, planning.RestoreOptions(tile=64, tile_overlap=16, batch_size=3)).restore([image])[0]
    assert tiled.tiles > 1 and tiled.routing == "downscaled"
    assert np.abs(tiled.rgb - local_whole(net, image)).max() < 1e-5


def test_a_tile_layout_that_takes_more_tiles_than_asked_is_explained_once_per_run():
    net = LocalNet()
    restorer = engine.Restorer(net, planning.RestoreOptions(tile=128, tile_overlap=32))
    first, second = restorer.restore([as_image(photo(160, 240, seed=1)), as_image(photo(160, 240, seed=2))])
    assert first.tiles == 6 and first.tile_size == [96, 104]
    said = [w for w in first.warnings if "--tile 128 on 240x160" in w]
    assert len(said) == 1 and "--tile-overlap 16 gives 2x2" in said[0]
    assert not [w for w in second.warnings if "--tile 128" in w]  # told once, not once per image
    fewer = engine.Restorer(net, planning.RestoreOptions(tile=128, tile_overlap=16)).restore(
        [as_image(photo(160, 240))]
    )
    assert fewer[0].tiles == 4 and not fewer[0].warnings


def _net_that(**capabilities):
    """A LocalNet whose spec declares other capabilities (what it can run in, tiles, a given routing)."""
    spec = replace(LOCAL_SPEC, capabilities=replace(LOCAL_SPEC.capabilities, **capabilities))
    return type("Declared", (LocalNet,), {"spec": property(lambda self: spec)})()


def test_the_engine_follows_what_the_spec_says_the_model_can_do():
    from irtool.archs.spec import Tiling

    image = as_image(photo(100, 140, seed=1))
    fp32_only = engine.Restorer(_net_that(precisions=("fp32",)), planning.RestoreOptions(precision="bf16"))
    assert fp32_only.amp_dtype is None and any("does not run in bf16" in n for n in fp32_only.notes)
    assert fp32_only.restore([image])[0].precision == "fp32"

    untiled = engine.Restorer(_net_that(tiling=Tiling(supported=False)), planning.RestoreOptions(tile=64))
    assert any("cannot run in tiles" in n for n in untiled.notes)
    assert untiled.restore([image])[0].tiles == 1  # whole, as it must be
    assert not untiled.needs_tiled_samples(as_image(photo(16, 16)))

    fixed = engine.Restorer(_net_that(imposed_routing=False), planning.RestoreOptions(tile=64))
    tiled = fixed.restore([image])[0]
    assert tiled.tiles > 1 and tiled.routing == "per-tile"  # tiles cannot share a routing it cannot be given
    with pytest.raises(IrtoolError, match="cannot take a given routing"):
        fixed.restore([image], routing=LocalNet().route(torch.rand(1, 3, 8, 8)))


def test_tiles_of_a_moce_ir_all_run_with_the_whole_images_routing(monkeypatch):
    model = random_moce(VARIANTS["tiny"], 0)
    calls = []
    original = model.run

    def spy(x, routing=None, **kw):
        calls.append((tuple(x.shape), routing))
        return original(x, routing, **kw)

    monkeypatch.setattr(model, "run", spy)
    image = as_image(photo(72, 96, seed=2))
    restorer = engine.Restorer(model, planning.RestoreOptions(tile=48, tile_overlap=16, route_size=64, batch_size=2))
    outcome = restorer.restore([image])[0]
    with torch.no_grad():
        x = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
        expected = model.route(restorer._downscaled(x))
    tile_calls = [(shape, r) for shape, r in calls if r is not None]
    assert outcome.tiles == sum(shape[0] for shape, _ in tile_calls) > 1
    for shape, routing in tile_calls:  # every tile got exactly the whole image's experts and gates
        assert torch.equal(routing.experts, expected.experts.expand(shape[0], -1, -1))
        assert torch.allclose(routing.gates, expected.gates.expand(shape[0], -1, -1))
    assert outcome.experts == expected.experts[0].tolist() and outcome.routing == "downscaled"

    calls.clear()
    per_tile = engine.Restorer(model, planning.RestoreOptions(tile=48, tile_overlap=16, route_per_tile=True)).restore(
        [image]
    )[0]
    assert per_tile.routing == "per-tile"
    assert all(r is None for _, r in calls) and len(calls) == per_tile.tiles + 1  # each tile routed itself


def test_out_of_memory_falls_back_to_tiles_halving_until_it_fits():
    class Hungry(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            if x.shape[-2] * x.shape[-1] > 100 * 100:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().run(x, routing)

    net = Hungry()
    images = [as_image(photo(256, 320, seed=s)) for s in (3, 4)]
    restorer = engine.Restorer(net, planning.RestoreOptions(tile_overlap=8, batch_size=2))
    outcomes = restorer.restore(images)
    for image, outcome in zip(images, outcomes):
        assert outcome.tiles > 1 and max(outcome.tile_size) <= 100
        assert np.abs(outcome.rgb - local_whole(LocalNet(), image)).max() < 1e-5
    # the batch was split; the first image halved its way down, the second started at the size that fitted
    assert any("retried with 80 px tiles" in w for w in outcomes[0].warnings)
    assert outcomes[1].tile_size == outcomes[0].tile_size
    assert restorer.learned_tile == 80  # 320 -> 160 -> 80: later large images start at 80 px tiles


def test_out_of_memory_even_with_small_tiles_is_a_clear_error():
    class Starving(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    with pytest.raises(engine.OutOfMemory, match="out of memory even with"):
        engine.Restorer(Starving(), planning.RestoreOptions()).restore([as_image(photo(80, 80))])


def test_reduced_precision_nan_is_redone_in_fp32():
    class Overflows(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            result = super().run(x, routing)
            if torch.is_autocast_enabled("cpu"):
                result.output = result.output * float("nan")
            return result

    image = as_image(photo(32, 40))
    outcome = engine.Restorer(Overflows(), planning.RestoreOptions(precision="bf16")).restore([image])[0]
    assert outcome.precision == "fp32" and any("NaN" in w for w in outcome.warnings)
    assert np.isfinite(outcome.rgb).all()
    assert np.abs(outcome.rgb - local_whole(LocalNet(), image)).max() < 1e-5


def test_a_batch_equals_its_images_one_by_one():
    model = random_moce(VARIANTS["tiny"], 0)
    images = [as_image(photo(40, 48, seed=s)) for s in range(3)]
    batched = engine.Restorer(model, planning.RestoreOptions(batch_size=3)).restore(images)
    for image, outcome in zip(images, batched):
        single = engine.Restorer(model, planning.RestoreOptions()).restore([image])[0]
        assert single.experts == outcome.experts
        assert np.abs(single.rgb - outcome.rgb).max() < 1e-5


def test_precision_choice():
    cpu = torch.device("cpu")
    assert policy.resolve_precision("auto", cpu) == (None, [])
    assert policy.resolve_precision("bf16", cpu)[0] == torch.bfloat16
    dtype, notes = policy.resolve_precision("fp16", cpu)
    assert dtype == torch.float16 and "slow" in notes[0]
    with pytest.raises(IrtoolError, match="--precision"):
        planning.RestoreOptions(precision="fp8").check()


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_image(path, io.from_array(array))


def test_plan_mirrors_trees_names_outputs_and_applies_the_rules(tmp_path):
    src = tmp_path / "in"
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.jpg", ".hidden.png", "sub/.cache/d.png"):
        write_png(src / rel, photo(8, 8))
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    jobs = planning.plan([str(src)], out, planning.RestoreOptions(suffix="_r"))
    assert [(j.src.relative_to(src).as_posix(), j.dst.relative_to(out).as_posix()) for j in jobs] == [
        ("a.png", "a_r.png"),
        ("sub/b.png", "sub/b_r.png"),
        ("sub/deeper/c.jpg", "sub/deeper/c_r.jpg"),
    ]
    as_tiff = planning.plan([str(src / "sub")], out, planning.RestoreOptions(format="tif"))
    assert [j.dst.name for j in as_tiff] == ["b.tiff", "c.tiff"]

    globbed = planning.plan([str(src / "**" / "*.jpg"), str(src / "a.png")], out)
    assert [j.dst.relative_to(out).as_posix() for j in globbed] == ["sub/deeper/c.jpg", "a.png"]

    two_folders = planning.plan([str(src / "sub"), str(src / "sub" / "deeper"), str(src / "a.png")], out)
    assert [j.dst.relative_to(out).as_posix() for j in two_folders] == [
        "sub/b.png",
        "sub/deeper/c.jpg",
        "deeper/c.jpg",
        "a.png",
    ]

    missing = planning.plan([str(tmp_path / "nope.png"), str(src / "*.webp")], out)
    assert [j.error.split(": ")[-1] for j in missing] == ["no such file or folder", "matches no images"]

    # the output folder inside the input folder is never walked as input; an input is never its own output
    write_png(src / "restored" / "a.png", photo(8, 8))
    inside = planning.plan([str(src)], src / "restored")
    assert all("restored" not in j.src.parts for j in inside)
    same = planning.plan([str(src / "a.png")], src, planning.RestoreOptions(overwrite=True))
    assert same[0].error and "overwrite the input" in same[0].error
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "a.png").hardlink_to(src / "a.png")  # the same file under another name
    linked = planning.plan([str(src / "a.png")], tmp_path / "linked", planning.RestoreOptions(overwrite=True))
    assert linked[0].error and "overwrite the input" in linked[0].error

    write_png(out / "a.png", photo(8, 8))
    existing = planning.plan([str(src / "a.png")], out)[0]
    assert existing.exists and existing.error is None and "exists" in existing.skip  # left as it is, not a failure
    assert planning.plan([str(src / "a.png")], out, planning.RestoreOptions(skip_existing=True))[0].skip
    assert planning.plan([str(src / "a.png")], out, planning.RestoreOptions(overwrite=True))[0].error is None
    twice = planning.plan([str(src / "a.png"), str(src / "sub" / "b.png"), str(src / "a.png")], tmp_path / "o2")
    assert twice[2].error and "already the output of" in twice[2].error


def test_restore_files_keeps_going_past_a_corrupt_file_and_keeps_order(tmp_path):
    src = tmp_path / "in"
    for name in ("a.png", "c.png", "d.png"):
        write_png(src / name, photo(24, 32, seed=len(name)))
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = tree_hashes(src)
    jobs = planning.plan([str(src)], tmp_path / "out")
    restorer = engine.Restorer(LocalNet(), planning.RestoreOptions(batch_size=2))
    reports = list(engine.restore_files(jobs, restorer))
    assert [r.status for r in reports] == ["ok", "failed", "ok", "ok"]
    assert "b.png" in reports[1].error and "\n" not in reports[1].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png", "d.png"]
    assert tree_hashes(src) == before


def test_interrupting_a_run_leaves_only_complete_files(tmp_path):
    src = tmp_path / "in"
    for n in range(4):
        write_png(src / f"{n}.png", photo(24, 24, seed=n))

    class Interrupted(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().run(x, routing)

    restorer = engine.Restorer(Interrupted(), planning.RestoreOptions())
    heard = []  # on_written: every image written, the ones finished after the interruption too
    with pytest.raises(KeyboardInterrupt):
        for _ in engine.restore_files(planning.plan([str(src)], tmp_path / "out"), restorer, on_written=heard.append):
            pass
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["0.png", "1.png"]
    assert sorted(Path(r.output).name for r in heard) == ["0.png", "1.png"]
    for path in written:
        assert io.read_image(path).width == 24


def test_default_model_chain(tmp_path, monkeypatch, no_builtin_default):
    ranked = [e.name for e in catalogue.rank_entries(catalogue.entries())]
    # AIO5 (noise, rain, haze, blur, low light) before AIO3 before CDD11 (weather, no noise); full before S
    assert ranked[:6] == [
        "moce_ir.aio5",
        "moce_ir_s.aio5",
        "moce_ir.aio3",
        "moce_ir_s.aio3",
        "moce_ir.cdd11",
        "moce_ir_s.cdd11",
    ]
    # networks without routing (no degradation to report) come after every routing one, whatever their setting
    routing = [catalogue.find_entry(name).arch in catalogue.ROUTING_ARCHS for name in ranked]
    assert "bioir.aio5" in ranked and routing == sorted(routing, reverse=True)
    with pytest.raises(WeightsNotFoundError) as info:
        loading.default_source()
    message = str(info.value)
    assert "irtool weights fetch moce_ir.aio5" in message and "--weights" in message and "\n" not in message

    folder = catalogue.cache_dir() / "moce_ir_s.aio3"
    folder.mkdir(parents=True)
    tiny_checkpoint(folder, name="last.ckpt")
    path, router, how = loading.default_source()
    assert path == folder / "last.ckpt" and router is None and "moce_ir_s.aio3" in how
    better = catalogue.cache_dir() / "moce_ir_s.aio5"
    better.mkdir(parents=True)
    tiny_checkpoint(better, name="last.ckpt")
    assert loading.default_source()[0] == better / "last.ckpt"

    # the manifest's default entry wins once its file is here (shipped inside the package)
    package = tmp_path / "pkg"
    (package / "models").mkdir(parents=True)
    packaged = package / "models" / "default.safetensors"
    packaged.write_bytes(b"x")
    monkeypatch.setattr(catalogue, "_PACKAGE_DIR", package)
    manifest = no_builtin_default
    entry = {
        "arch": "moce_ir",
        "variant": None,
        "setting": "Synthetic",
        "tasks": 5,
        "files": [
            {
                "role": "weights",
                "arch": "moce_ir",
                "filename": "default.safetensors",
                "url": None,
                "packaged": "models/default.safetensors",
            }
        ],
    }
    manifest = {**manifest, "default": "test.default", "models": {"test.default": entry, **manifest["models"]}}
    monkeypatch.setattr(catalogue, "load_manifest", lambda: manifest)
    path, router, how = loading.default_source()
    assert path == packaged and router is None and "test.default" in how
    # a default whose file is missing falls back to the ranked cache
    packaged.unlink()
    assert loading.default_source()[0] == better / "last.ckpt"


def test_router_is_passed_through_only_when_load_model_takes_one(tmp_path):
    import inspect

    from irtool.loading import load_model

    checkpoint = tiny_checkpoint(tmp_path)
    takes_router = "router" in inspect.signature(load_model).parameters
    # before LoRA-IR support: a clear refusal; after: load_model judges the file (a MoCE-IR net is no router)
    with pytest.raises(IrtoolError, match=None if takes_router else "cannot load LoRA-IR routers"):
        engine.Restorer.load(planning.RestoreOptions(weights=str(checkpoint), router=str(checkpoint)))


def test_python_api_returns_arrays_in_the_inputs_own_layout(tmp_path):
    net = LocalNet()
    gray16 = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 50
    rgba = np.dstack([photo(32, 40), np.full((32, 40), 77, np.uint8)])
    write_png(tmp_path / "p.png", photo(24, 24))
    results = irtool.restore([gray16, rgba, str(tmp_path / "p.png"), str(tmp_path / "missing.png")], model=net)
    assert [r.report.status for r in results] == ["ok", "ok", "ok", "failed"]
    assert results[0].image.shape == gray16.shape and results[0].image.dtype == np.uint16
    assert results[1].image.shape == rgba.shape and np.array_equal(results[1].image[..., 3], rgba[..., 3])
    assert results[2].report.input.endswith("p.png") and results[2].image.shape == (24, 24, 3)
    reports = irtool.restore(str(tmp_path / "p.png"), tmp_path / "out", model=net, suffix="_x")
    assert reports[0].image is None and reports[0].report.output.endswith("p_x.png")
    assert (tmp_path / "out" / "p_x.png").is_file()
    with pytest.raises(IrtoolError, match="unknown option"):
        irtool.restore(gray16, model=net, tiles=3)


def test_a_model_error_on_one_image_fails_that_image_only(tmp_path):
    src = tmp_path / "in"
    for n, size in enumerate((16, 24, 16)):
        write_png(src / f"{n}.png", photo(size, size, seed=n))

    class Picky(LocalNet):
        def run(self, x, routing=None, *, dense=False):
            if x.shape[-1] == 24:
                raise ValueError("cannot handle 24 px\nsecond line")
            return super().run(x, routing)

    reports = list(
        engine.restore_files(
            planning.plan([str(src)], tmp_path / "out"), engine.Restorer(Picky(), planning.RestoreOptions(batch_size=2))
        )
    )
    assert [r.status for r in reports] == ["ok", "failed", "ok"]
    assert reports[1].error.endswith("model failed (ValueError: cannot handle 24 px)")


def test_a_single_global_gate_is_reported_as_one_layer_with_the_chosen_experts_gate():
    """LoRA-IR's routing: experts (B, k) and a gate per expert (B, E); reports keep the (layers, k) layout."""

    class GlobalGate(LoRARouting):
        """A classifier's routing whose gates are its whole softmax (a gate for every expert, not only the chosen)."""

        gates = property(lambda self: self.logits.softmax(dim=-1))

    one_gate_spec = replace(
        LOCAL_SPEC,
        capabilities=replace(
            LOCAL_SPEC.capabilities,
            routing=RoutingReport(per_layer=False, separate=True, layer_names=lambda m: [], num_experts=lambda m: 3),
            classifier=Classifier(names=lambda m: ("rain",), classify=lambda m, routing: m.classify(routing)),
        ),
    )

    class OneGate(LocalNet):
        spec = one_gate_spec

        def route(self, x):
            return GlobalGate(torch.tensor([[0.0, 2.0, 1.0]]).repeat(x.shape[0], 1), torch.zeros(x.shape[0], 1))

        def run(self, x, routing=None, *, dense=False):
            return MoCEResultLike(super().run(x).output, routing or self.route(x))

        def classify(self, routing):
            return [("rain", 0.8)] * routing.logits.shape[0]

    outcome = engine.Restorer(OneGate(), planning.RestoreOptions()).restore([as_image(photo(16, 16))])[0]
    assert outcome.experts == [[1]] and outcome.degradation == "rain" and outcome.confidence == 0.8
    assert (
        len(outcome.gates) == 1 and abs(outcome.gates[0][0] - torch.tensor([0.0, 2.0, 1.0]).softmax(0)[1].item()) < 1e-6
    )


class MoCEResultLike:
    def __init__(self, output, routing):
        self.output, self.routing = output, routing
