"""irtool.load_model: every accepted format round-trips; every malformed checkpoint gives one clear line."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FP32_ATOL, ODD, make_images, random_moce

import irtool
from irtool.archs.moce_ir import VARIANTS
from irtool.devices.policy import resolve_device
from irtool.errors import CheckpointError, IrtoolError, UnsafeCheckpointError, WeightsNotFoundError
from irtool.loading import canonicalize


class NotAllowed:
    """A class a weights-only unpickler must refuse (defined at module level so a trusted load can rebuild it)."""

    def __init__(self, value: int = 1) -> None:
        self.value = value


def _save(sd: dict, path: Path, layout: str) -> Path:
    """Write `sd` the way various tools do."""
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path
    wrapped = {
        "lightning": lambda: {
            "state_dict": {f"net.{k}": v for k, v in sd.items()},
            "epoch": 3,
            "global_step": 9,
            "pytorch-lightning_version": "2.4.0",
            "loops": {"fit": {"x": 1}},
            "callbacks": {},
        },
        "plain": lambda: sd,
        "params": lambda: {"params": sd},
        "params_ema": lambda: {"params": {k: torch.zeros_like(v) for k, v in sd.items()}, "params_ema": sd},
        "state_dict": lambda: {"state_dict": sd},
        "model": lambda: {"model": sd, "optimizer": {"lr": 1e-3}},
        "net": lambda: {"net": sd},
        "ddp": lambda: {f"module.{k}": v for k, v in sd.items()},
        "compiled": lambda: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    }[layout]()
    torch.save(wrapped, path)
    return path


LAYOUTS = [
    ("lightning", "last.ckpt"),
    ("plain", "w.pth"),
    ("params", "w.pth"),
    ("params_ema", "w.pth"),
    ("state_dict", "w.pt"),
    ("model", "w.pt"),
    ("net", "w.pth"),
    ("ddp", "w.pth"),
    ("compiled", "w.pth"),
    ("safetensors", "w.safetensors"),
]


@pytest.mark.parametrize("layout,filename", LAYOUTS, ids=[layout for layout, _ in LAYOUTS])
@pytest.mark.parametrize("config_name", ["tiny", "odd"])
def test_every_format_round_trips(tmp_path, layout, filename, config_name):
    config = VARIANTS["tiny"] if config_name == "tiny" else ODD
    original = random_moce(config, seed=2)
    path = _save(original.state_dict(), tmp_path / filename, layout)
    loaded = irtool.load_model(path, device="cpu")
    assert loaded.config == config.__class__.from_dict({**config.to_dict(), "top_k": 1})
    if config.top_k == 1:
        x = make_images(2, 24, 32)
        with torch.no_grad():
            # two module instances: equal to fp32 rounding, not bit for bit (see FP32_ATOL)
            torch.testing.assert_close(loaded(x), original(x), atol=FP32_ATOL, rtol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_converted_safetensors_metadata_restores_what_shapes_cannot_show(tmp_path):
    from safetensors.torch import save_file

    original = random_moce(ODD, seed=1)  # top_k = 2 leaves no trace in the tensors
    meta = {"irtool.arch": "moce_ir", "irtool.config": json.dumps(ODD.to_dict())}
    save_file(original.state_dict(), str(tmp_path / "odd.safetensors"), metadata=meta)
    loaded = irtool.load_model(tmp_path / "odd.safetensors", device="cpu")
    assert loaded.config == ODD
    x = make_images(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), atol=FP32_ATOL, rtol=0)  # two instances: FP32_ATOL
    # metadata that contradicts the tensors is ignored in favour of the shapes
    wrong = {"irtool.arch": "moce_ir", "irtool.config": json.dumps({**ODD.to_dict(), "dim": 12})}
    save_file(original.state_dict(), str(tmp_path / "wrong.safetensors"), metadata=wrong)
    assert irtool.load_model(tmp_path / "wrong.safetensors", device="cpu").config.dim == 8


def test_a_folder_with_last_ckpt_loads(tmp_path):
    folder = tmp_path / "MoCE_IR_S_AIO3"
    folder.mkdir()
    _save(random_moce(VARIANTS["tiny"]).state_dict(), folder / "last.ckpt", "lightning")
    assert irtool.load_model(folder, device="cpu").config == VARIANTS["tiny"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        irtool.load_model(empty)


def test_dtype_and_device_arguments(tmp_path):
    path = _save(random_moce(VARIANTS["tiny"]).state_dict(), tmp_path / "w.pth", "plain")
    model = irtool.load_model(str(path), device="cpu", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert resolve_device(None).type in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(IrtoolError, match="not a device name"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(IrtoolError, match="CUDA is not available"):
            irtool.load_model(path, device="cuda:1")


# -- malformed files: one line naming the file and the problem


def _assert_one_line(exc: pytest.ExceptionInfo, path: Path | str) -> None:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message


def test_truncated_files(tmp_path):
    good = _save(random_moce(VARIANTS["tiny"]).state_dict(), tmp_path / "good.ckpt", "lightning")
    data = good.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        irtool.load_model(cut)
    _assert_one_line(exc, cut)

    st = _save(random_moce(VARIANTS["tiny"]).state_dict(), tmp_path / "good.safetensors", "safetensors")
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file") as exc:
        irtool.load_model(cut_st)
    _assert_one_line(exc, cut_st)


@pytest.mark.parametrize(
    "content,message",
    [(b"", "empty file"), (b"hello, I am text\n", "not a checkpoint"), (bytes(range(7, 250, 3)), "not a checkpoint")],
    ids=["empty", "text", "random"],
)
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as exc:
        irtool.load_model(path)
    _assert_one_line(exc, path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such file"):
        irtool.load_model("nowhere/model.pth")


def test_foreign_state_dict_is_named_as_such(tmp_path):
    foreign = {f"backbone.layer{i}.conv.weight": torch.zeros(2, 2, 3, 3) for i in range(312)}
    path = tmp_path / "resnet.pth"
    torch.save(foreign, path)
    with pytest.raises(
        CheckpointError, match=r"not a MoCE-IR .*checkpoint: 312 unexpected keys such as 'backbone"
    ) as exc:
        irtool.load_model(path)
    _assert_one_line(exc, path)


def test_mismatched_checkpoints(tmp_path):
    sd = random_moce(VARIANTS["tiny"]).state_dict()
    missing = dict(sd)
    for key in [k for k in sd if ".ffn.dwconv." in k][:3]:
        del missing[key]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="3 missing keys such as") as exc:
        irtool.load_model(tmp_path / "missing.pth")
    _assert_one_line(exc, tmp_path / "missing.pth")

    extra = {**sd, "dec.0.2.layers.0.adapter.extra.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected keys such as 'dec.0.2.layers.0.adapter.extra.weight'"):
        irtool.load_model(tmp_path / "extra.pth")

    shape = dict(sd)
    shape["refinement.layers.0.ffn.dwconv.weight"] = torch.zeros(64, 1, 5, 5)
    torch.save(shape, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError, match=r"wrong shape such as 'refinement.layers.0.ffn.dwconv.weight' \(\(64, 1, 5, 5\)"
    ):
        irtool.load_model(tmp_path / "shape.pth")

    broken = {k: v for k, v in sd.items() if k != "output.weight"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="looks like MoCE-IR but its config cannot be read"):
        irtool.load_model(tmp_path / "broken.pth")


def test_no_tensors_at_all(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no weights found"):
        irtool.load_model(tmp_path / "meta.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        irtool.load_model(tmp_path / "list.pth")


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    sd = random_moce(VARIANTS["tiny"]).state_dict()
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": sd, "hparams": NotAllowed(3)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused.*NotAllowed.*--trust-checkpoint") as exc:
        irtool.load_model(path)
    _assert_one_line(exc, path)
    assert irtool.load_model(path, trust=True).config == VARIANTS["tiny"]


def test_harmless_pickled_extras_load_without_trust(tmp_path):
    sd = random_moce(VARIANTS["tiny"]).state_dict()
    path = tmp_path / "with_args.pth"
    torch.save(
        {"state_dict": sd, "args": argparse.Namespace(lr=2e-4), "best": np.float64(31.2), "hist": np.zeros(3)}, path
    )
    assert irtool.load_model(path).config == VARIANTS["tiny"]


def test_canonicalize_keeps_only_tensors_and_strips_shared_prefixes():
    sd = {"net.module.a": torch.zeros(1), "net.module.b": torch.ones(1)}
    assert list(canonicalize({"state_dict": sd, "epoch": 1})) == ["a", "b"]
    # a prefix shared by only some keys is kept
    assert set(canonicalize({"net.a": torch.zeros(1), "b": torch.zeros(1)})) == {"net.a", "b"}


# -- manifest names


def test_unknown_and_undownloaded_names():
    with pytest.raises(WeightsNotFoundError, match="neither a file nor a known model name"):
        irtool.load_model("no_such_model")
    with pytest.raises(WeightsNotFoundError, match=r"not downloaded yet.*irtool weights fetch moce_ir_s\.aio3"):
        irtool.load_model("MoCE_IR_S_AIO3")  # an alias, case as the official id


def test_a_cached_name_loads(tmp_path):
    from irtool.weights import catalogue

    entry = catalogue.find_entry("moce_ir.aio5")
    entry.folder.mkdir(parents=True)
    _save(random_moce(VARIANTS["tiny"]).state_dict(), entry.folder / "last.ckpt", "lightning")
    assert irtool.load_model("moce_ir.aio5", device="cpu").config == VARIANTS["tiny"]
    assert irtool.load_model("MoCE_IR_AIO5", device="cpu").config == VARIANTS["tiny"]
    shutil.rmtree(entry.folder)


def test_a_checkpoint_outside_the_package_loads_without_torch_dynamo(tmp_path):
    """A weights file anywhere but irtool/models has its recorded config checked on the meta device. That check once
    imported torch._dynamo (a meta division in MoCE-IR's router, a meta `normal_` in CLIP's embeddings): 0.8-1.3 s of
    every run's start. The loaded model still equals the packaged one exactly."""
    import subprocess
    import sys

    packaged = Path(irtool.__file__).parent / "models" / "irtool_default.safetensors"
    outside = tmp_path / "copy.safetensors"
    shutil.copy(packaged, outside)
    code = (
        "import sys, torch\n"
        "from irtool.loading import load_model, _uninitialised\n"
        "from irtool.archs import ARCHS\n"
        "a, b = load_model(sys.argv[1]), load_model(sys.argv[2])\n"
        "assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))\n"
        "spec = ARCHS['clip_router']\n"
        "with torch.device('meta'), _uninitialised():\n"
        "    spec.build(next(iter(spec.variants.values())))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(outside), str(packaged)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_uninitialised_builds_restore_torch_init_even_after_an_error():
    from irtool.loading import _uninitialised

    before = torch.nn.init.normal_
    with pytest.raises(RuntimeError), _uninitialised():
        assert torch.nn.init.normal_ is not before
        t = torch.full((3,), 7.0)
        assert torch.equal(torch.nn.init.normal_(t), torch.full((3,), 7.0))  # left as it was
        raise RuntimeError("a build that fails")
    assert torch.nn.init.normal_ is before
    assert not torch.equal(torch.nn.init.normal_(torch.full((1000,), 7.0)), torch.full((1000,), 7.0))
