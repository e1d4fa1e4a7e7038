"""irtool.weights.catalogue: the manifest and its schema, fetch into the cache (127.0.0.1 server), import/convert/verify/remove
with random-weight checkpoints, and the `irtool weights` commands."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from helpers import ODD, random_moce
from local_server import GoogleDrive, LocalServer, route_google_to, without_proxies
from typer.testing import CliRunner

import irtool
from irtool.archs.moce_ir import VARIANTS
from irtool.cli import app
from irtool.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    IrtoolError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from irtool.weights import catalogue, store
from irtool.weights import drive as weights_drive

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


class NotAllowed:
    """A pickled object that a weights-only load refuses."""


def _lightning(sd: dict) -> dict:
    return {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3, "global_step": 90}


@pytest.fixture(scope="module")
def tiny_model():
    return random_moce(VARIANTS["tiny"], seed=3)


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model) -> Path:
    """The tiny MoCE-IR as an official-style Lightning `last.ckpt`."""
    folder = tmp_path / "download"
    folder.mkdir()
    torch.save(_lightning(tiny_model.state_dict()), folder / "last.ckpt")
    return folder / "last.ckpt"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal state dicts, tensor for tensor (cheaper than comparing outputs on this shared 2-core machine)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeManifest:
    """A manifest of test entries in place of the packaged one: `tiny.aio3` (one file, variant tiny) and `pair.test`
    (two files whose roles are told apart by architecture, like LoRA-IR's ir/router)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = {
            "schema_version": 1,
            "default": None,
            "models": {
                "tiny.aio3": {
                    "aliases": ["Tiny_AIO3"],
                    "arch": "moce_ir",
                    "variant": "tiny",
                    "setting": "AIO3",
                    "tasks": ["noise", "rain", "haze"],
                    "classes": None,
                    "files": [
                        {
                            "role": "weights",
                            "arch": "moce_ir",
                            "filename": "last.ckpt",
                            "url": None,
                            "sha256": None,
                            "size": None,
                        }
                    ],
                    "source": {"paper": "test", "repo": "https://example.org/repo", "license": "CC0"},
                    "reported": {},
                },
                "pair.test": {
                    "arch": "moce_ir",
                    "variant": None,
                    "setting": "AllWeather",
                    "tasks": ["snow", "rain", "raindrop"],
                    "classes": ["snow", "rain", "raindrop"],
                    "files": [
                        {
                            "role": "ir",
                            "arch": "moce_ir",
                            "filename": "ir.pth",
                            "url": None,
                            "sha256": None,
                            "size": None,
                        },
                        {
                            "role": "router",
                            "arch": "future_router",
                            "filename": "router.pth",
                            "url": None,
                            "sha256": None,
                            "size": None,
                        },
                    ],
                    "source": {"paper": "test", "repo": "https://example.org/repo", "license": "CC0"},
                    "reported": {},
                },
            },
        }
        self.write()

    def file(self, name: str, **fields) -> None:
        self.data["models"][name]["files"][0].update(fields)
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data))
        catalogue.load_manifest.cache_clear()


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    test = FakeManifest(tmp_path / "manifest.json")
    monkeypatch.setattr(catalogue, "manifest_path", lambda: test.path)
    yield test
    catalogue.load_manifest.cache_clear()


@pytest.fixture
def server(monkeypatch):
    without_proxies(monkeypatch)
    with LocalServer() as s:
        yield s


# --------------------------------------------------------------------------------------------------------------------
# The manifest and its schema


def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency (pip install -e '.[test]')")
    schema = json.loads(catalogue.schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_manifest_follows_its_schema():
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in _validator().iter_errors(json.loads((REPO / "weights_manifest.json").read_text()))
    ]
    assert errors == []


@pytest.mark.parametrize(
    "break_it,complaint",
    [
        (lambda m: m["models"]["moce_ir.aio3"]["files"][0].pop("sha256"), "'sha256' is a required property"),
        (lambda m: m["models"]["moce_ir.aio3"]["files"][0].update(sha256="abc"), "does not match"),
        (lambda m: m["models"]["moce_ir.aio3"].update(setting="AIO4"), "is not one of"),
        (lambda m: m["models"]["moce_ir.aio3"].update(tasks=["noise", "rain"]), "was expected"),
        (lambda m: m["models"]["moce_ir.aio3"]["reported"]["rain100l"].update(ssim=98.4), "greater than the maximum"),
        (lambda m: m["models"]["moce_ir.aio3"]["files"][0].update(url="ftp://x/last.ckpt"), "does not match"),
        (lambda m: m["models"].update({"../evil": m["models"]["moce_ir.aio3"]}), "does not match"),
        (lambda m: m["models"]["lora_ir.setting1"]["files"][0].update(role="backbone"), "is not one of"),
    ],
    ids=["no-sha256-key", "bad-sha256", "setting", "aio3-tasks", "ssim-range", "url-scheme", "name", "role"],
)
def test_the_schema_rejects_broken_entries(break_it, complaint):
    broken = json.loads((REPO / "weights_manifest.json").read_text())
    break_it(broken)
    messages = [e.message for e in _validator().iter_errors(broken)]
    assert any(complaint in m for m in messages), messages


def _nested_dicts(obj):
    """Every dict inside a JSON value (the manifest's measured figures nest their commands)."""
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from _nested_dicts(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _nested_dicts(value)


def test_manifest_facts_the_schema_cannot_state():
    models = json.loads((REPO / "weights_manifest.json").read_text())["models"]
    names = [n.lower() for n in models] + [a.lower() for e in models.values() for a in e.get("aliases", [])]
    assert len(names) == len(set(names)), "names and aliases are unique"
    expected = {f"{v}_{s}" for v in ("MoCE_IR", "MoCE_IR_S") for s in ("AIO3", "AIO5", "CDD11")}
    official = {n: e for n, e in models.items() if e["setting"] != "Synthetic"}
    moce = {e["aliases"][0]: e for e in official.values() if e["arch"] == "moce_ir"}
    assert set(moce) == expected
    for official_id, entry in moce.items():
        assert entry["variant"] in VARIANTS and official_id.startswith(entry["variant"] + "_")
        assert entry["setting"] == official_id.rsplit("_", 1)[1]
        (spec,) = entry["files"]
        assert spec["drive_path"] == f"{official_id}/last.ckpt" and spec["drive_id"] is None and spec["url"] is None
    for name, entry in models.items():
        roles = [f["role"] for f in entry["files"]]
        assert len(roles) == len(set(roles)), name
        scores = {k: v for k, v in entry["reported"].items() if k != "average"}
        if "average" in entry["reported"]:  # the paper's average is the mean of its columns (rounded per column)
            mean_psnr = sum(s["psnr"] for s in scores.values()) / len(scores)
            mean_ssim = sum(s["ssim"] for s in scores.values()) / len(scores)
            assert abs(entry["reported"]["average"]["psnr"] - mean_psnr) < 0.01, name
            assert abs(entry["reported"]["average"]["ssim"] - mean_ssim) < 0.0015, name
    for name, entry in models.items():  # commands are recorded as a user retypes them: no machine's own paths
        record = entry.get("training") or {}
        commands = [record.get("command", "")] + [m.get("command", "") for m in _nested_dicts(entry.get("measured"))]
        for command in filter(None, commands):
            absolute = [w for w in command.split() if w.startswith(("/", "~")) or w[1:3] == ":\\"]
            assert not absolute, f"{name}: machine-specific paths {absolute} in {command!r}; use PHOTOS/..., RUN"
    lora = models["lora_ir.setting1"]
    assert {f["role"]: f["arch"] for f in lora["files"]} == {"ir": "lora_ir", "router": "clip_router"}
    assert all(
        f["url"].startswith("https://huggingface.co/shallowdream204/LoRA-IR/resolve/main/") for f in lora["files"]
    )
    assert lora["classes"] == ["snow", "rain", "raindrop"]


def test_the_schema_is_package_data():
    # the manifest is kept at the top and copied in by the build: tests/test_package.py builds the package to check
    from irtool.train.presets import toml_loads

    patterns = toml_loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["irtool"]
    name = catalogue.SCHEMA_NAME
    assert (REPO / "irtool" / name).is_file() and any(fnmatch(name, p) for p in patterns), name


# --------------------------------------------------------------------------------------------------------------------
# Fetch


def test_fetch_downloads_checks_and_records(manifest, server, tiny_ckpt):
    server.file("/last.ckpt", tiny_ckpt.read_bytes())
    seen = []
    (got,) = store.fetch("Tiny_AIO3", urls={"weights": server.url("/last.ckpt")}, progress=lambda *a: seen.append(a))
    entry = catalogue.find_entry("tiny.aio3")
    assert got.path == entry.folder / "last.ckpt" and got.sha256 == _sha(tiny_ckpt) and not got.already
    assert got.checked == "loads strictly as MoCE-IR tiny"
    assert seen[-1] == ("last.ckpt", tiny_ckpt.stat().st_size, tiny_ckpt.stat().st_size)
    state = entry.state()["weights"]
    assert state["how"] == "fetched" and state["sha256"] == got.sha256 and state["source"] == server.url("/last.ckpt")
    assert catalogue.entry_status(entry).status == "cached"
    assert not (catalogue.cache_dir() / ".downloads").exists()
    assert irtool.load_model("tiny.aio3", device="cpu").config == VARIANTS["tiny"]
    # cached already: nothing is downloaded again, unless forced
    requests = len(server.requests)
    assert store.fetch("tiny.aio3", urls={"weights": server.url("/last.ckpt")})[0].already
    assert len(server.requests) == requests
    assert not store.fetch("tiny.aio3", urls={"weights": server.url("/last.ckpt")}, force=True)[0].already


def test_fetch_from_the_manifest_url_and_from_a_mirror(manifest, server, tiny_ckpt, monkeypatch):
    data = tiny_ckpt.read_bytes()
    server.file("/files/last.ckpt", data)
    manifest.file("tiny.aio3", url=server.url("/files/last.ckpt"), sha256=_sha(tiny_ckpt), size=len(data))
    (got,) = store.fetch("tiny.aio3")
    assert got.checked == "sha256 matches the manifest" and got.path.read_bytes() == data
    store.remove("tiny.aio3")
    server.file("/mirror/tiny.aio3/last.ckpt", data)
    monkeypatch.setenv(catalogue.MIRROR_ENV, server.url("/mirror/"))
    (got,) = store.fetch("tiny.aio3")
    assert server.requests[-1][1] == "/mirror/tiny.aio3/last.ckpt" and got.path.read_bytes() == data


FOLDER = "https://drive.google.com/drive/folders/1pQBceb8cCPdIzbqbNNGqV5qNXzzqL4uK"


@pytest.fixture
def drive(server, monkeypatch, tmp_path):
    """Google Drive's pages on the local server, with gdown's requests routed there (and no gdown cookies)."""
    monkeypatch.setattr(weights_drive, "GDOWN_COOKIES", tmp_path / "no-cookies.txt")
    route_google_to(server, monkeypatch)
    return GoogleDrive(server, scan_above=100_000)


def test_fetch_from_a_drive_folder_installs_the_file_at_its_path(manifest, drive, tiny_ckpt):
    data = tiny_ckpt.read_bytes()  # over 100 kB: Drive's virus-scan page comes first
    manifest.file("tiny.aio3", drive_folder=FOLDER, drive_path="Tiny_AIO3/last.ckpt")
    drive.folder(FOLDER.rsplit("/", 1)[1], "ckpts", {"Tiny_AIO3/last.ckpt": data, "Tiny_AIO5/last.ckpt": b"other"})
    seen = []
    (got,) = store.fetch("tiny.aio3", progress=lambda *a: seen.append(a))
    entry = catalogue.find_entry("tiny.aio3")
    assert got.path == entry.folder / "last.ckpt" and got.path.read_bytes() == data and got.sha256 == _sha(tiny_ckpt)
    assert got.checked == "loads strictly as MoCE-IR tiny" and seen[-1] == ("last.ckpt", len(data), len(data))
    state = entry.state()["weights"]
    assert state["how"] == "fetched" and state["sha256"] == got.sha256 and state["source"] == FOLDER
    assert any("confirm=t" in path for _, path, _ in drive.server.requests)  # through the confirmation page
    assert not (catalogue.cache_dir() / ".downloads").exists()
    assert irtool.load_model("tiny.aio3", device="cpu").config == VARIANTS["tiny"]
    store.remove("tiny.aio3")
    result = runner.invoke(app, ["weights", "fetch", "Tiny_AIO3"])  # the command prints the digest it recorded
    assert result.exit_code == 0 and f"saved to {entry.folder / 'last.ckpt'}" in result.stdout, result.output
    assert f"sha256 {_sha(tiny_ckpt)}; loads strictly as MoCE-IR tiny" in result.stdout


def test_fetch_from_drive_refuses_a_wrong_sha256_and_installs_nothing(manifest, drive, tiny_ckpt):
    manifest.file("tiny.aio3", drive_folder=FOLDER, drive_path="Tiny_AIO3/last.ckpt", sha256="0" * 64)
    drive.folder(FOLDER.rsplit("/", 1)[1], "ckpts", {"Tiny_AIO3/last.ckpt": tiny_ckpt.read_bytes()})
    with pytest.raises(
        ChecksumError, match=rf"^tiny\.aio3: .*sha256 {_sha(tiny_ckpt)} instead of 0{{64}}.*nothing was kept"
    ):
        store.fetch("tiny.aio3")
    assert not any(p.is_file() for p in catalogue.cache_dir().rglob("*"))
    assert catalogue.entry_status(catalogue.find_entry("tiny.aio3")).status == "missing"


def test_fetch_from_drive_over_quota_is_one_line_with_what_to_do(manifest, drive, tiny_ckpt):
    manifest.file("tiny.aio3", drive_folder=FOLDER, drive_path="Tiny_AIO3/last.ckpt")
    ids = drive.folder(FOLDER.rsplit("/", 1)[1], "ckpts", {"Tiny_AIO3/last.ckpt": tiny_ckpt.read_bytes()})
    drive.over_quota.add(ids["Tiny_AIO3/last.ckpt"])
    result = runner.invoke(app, ["weights", "fetch", "tiny.aio3"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    line = result.stderr
    assert line.startswith("error: tiny.aio3: https://drive.google.com/uc?id=")
    assert "download quota for this file is used up" in line and "run the same command again later" in line
    assert line.rstrip().endswith(
        f"To do it by hand: download Tiny_AIO3/last.ckpt from the Google Drive folder {FOLDER} in a browser, then run "
        "`irtool weights import last.ckpt --name tiny.aio3`"
    )
    assert not any(p.is_file() for p in catalogue.cache_dir().rglob("*"))


def test_an_interrupted_drive_fetch_leaves_nothing_at_the_destination_and_resumes(manifest, drive, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    manifest.file("tiny.aio3", drive_folder=FOLDER, drive_path="Tiny_AIO3/last.ckpt")
    path = "Tiny_AIO3/last.ckpt"
    drive.folder(FOLDER.rsplit("/", 1)[1], "ckpts", {path: data}, cuts={path: [1_200_000]})
    kept = 1 << 20  # gdown writes 512 kB chunks: two whole ones arrived
    with pytest.raises(
        DownloadError, match=r"^tiny\.aio3: .*connection lost before the end .*; 1\.0 MB kept in .*resume"
    ) as exc:
        store.fetch("tiny.aio3", retries=0)
    assert "\n" not in str(exc.value)
    entry = catalogue.find_entry("tiny.aio3")
    assert not entry.folder.exists() and catalogue.entry_status(entry).partial_bytes == kept
    (got,) = store.fetch("tiny.aio3", retries=0)
    assert got.resumed_from == kept and got.path.read_bytes() == data and got.sha256 == _sha(tiny_ckpt)
    assert drive.server.requests[-1][2]["Range"] == f"bytes={kept}-"
    assert catalogue.entry_status(entry).partial_bytes == 0 and not (catalogue.cache_dir() / ".downloads").exists()


def test_a_two_file_entry_fetches_both_files_from_drive(manifest, drive, tiny_ckpt):
    for spec, path in zip(manifest.data["models"]["pair.test"]["files"], ("pair/ir.pth", "pair/router.pth")):
        spec.update(drive_folder=FOLDER, drive_path=path)
    manifest.write()
    router = b"a router this irtool cannot build"
    drive.folder(FOLDER.rsplit("/", 1)[1], "ckpts", {"pair/ir.pth": tiny_ckpt.read_bytes(), "pair/router.pth": router})
    got = store.fetch("pair.test")
    assert [(g.role, g.path.name) for g in got] == [("ir", "ir.pth"), ("router", "router.pth")]
    assert (
        got[1].path.read_bytes() == router and got[1].checked == "not loaded: this irtool has no future_router network"
    )
    entry = catalogue.find_entry("pair.test")
    assert catalogue.entry_status(entry).status == "cached" and set(entry.state()) == {"ir", "router"}


def test_fetch_checksum_mismatch_keeps_nothing(manifest, server, tiny_ckpt):
    server.file("/last.ckpt", tiny_ckpt.read_bytes())
    manifest.file("tiny.aio3", url=server.url("/last.ckpt"), sha256="0" * 64)
    with pytest.raises(ChecksumError, match=r"^tiny\.aio3: .*not the expected one.*nothing was kept"):
        store.fetch("tiny.aio3")
    assert not catalogue.cache_dir().exists() or not any(catalogue.cache_dir().rglob("*.ckpt*"))
    assert catalogue.entry_status(catalogue.find_entry("tiny.aio3")).status == "missing"


def test_fetch_of_a_file_that_is_not_the_checkpoint_keeps_nothing(manifest, server, tmp_path):
    other = tmp_path / "odd.ckpt"  # a MoCE-IR, but not the `tiny` variant the entry promises
    torch.save(_lightning(random_moce(ODD).state_dict()), other)
    server.file("/last.ckpt", other.read_bytes())
    with pytest.raises(
        CheckpointError,
        match=r"tiny\.aio3: the file from .* is not this checkpoint .*dim=8 instead of 16.*not tiny\); nothing was kept",
    ):
        store.fetch("tiny.aio3", urls={"weights": server.url("/last.ckpt")})
    assert not any(catalogue.cache_dir().rglob("*.ckpt*"))


def test_fetch_of_an_unsafe_pickle_keeps_it_out_of_the_cache_but_on_disk(manifest, server, tmp_path, tiny_model):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**_lightning(tiny_model.state_dict()), "extra": NotAllowed()}, unsafe)
    server.file("/last.ckpt", unsafe.read_bytes())
    url = server.url("/last.ckpt")
    with pytest.raises(
        UnsafeCheckpointError, match=r"not checked; it is kept at (\S+)\. If you trust .*--trust-checkpoint`$"
    ) as exc:
        store.fetch("tiny.aio3", urls={"weights": url})
    kept = Path(re.search(r"kept at (\S+)\. ", str(exc.value)).group(1))
    assert kept.read_bytes() == unsafe.read_bytes() and catalogue.find_entry("tiny.aio3").local_files() == {}
    assert store.import_checkpoint(kept, name="tiny.aio3", trust=True).variant == "tiny"
    store.remove("tiny.aio3")
    (got,) = store.fetch("tiny.aio3", urls={"weights": url}, trust=True)
    assert got.checked == "loads strictly as MoCE-IR tiny"


def test_fetch_failures_give_the_manual_steps(manifest, server):
    server.status("/gone.ckpt", 404)
    with pytest.raises(DownloadError) as exc:
        store.fetch("tiny.aio3", urls={"weights": server.url("/gone.ckpt")})
    message = str(exc.value)
    assert "\n" not in message and message.startswith("tiny.aio3: ") and "HTTP 404" in message
    assert f"download {server.url('/gone.ckpt')}" not in message  # the URL came from --url, the manifest has none
    assert message.endswith("then run `irtool weights import last.ckpt --name tiny.aio3`")
    assert not (catalogue.cache_dir() / ".downloads").exists()  # no empty folders left behind either
    with pytest.raises(
        WeightsNotFoundError,
        match="tiny.aio3: no direct download link is published; get last.ckpt from https://example.org/repo",
    ):
        store.fetch("tiny.aio3")  # no URL anywhere


def test_an_interrupted_fetch_resumes_and_list_shows_it(manifest, server, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    server.file("/last.ckpt", data, cuts=[1_000_000])
    with pytest.raises(DownloadError, match=r"connection closed after 1\.0 MB.*kept in .*resume"):
        store.fetch("tiny.aio3", urls={"weights": server.url("/last.ckpt")}, retries=0)
    status = catalogue.entry_status(catalogue.find_entry("tiny.aio3"))
    assert status.status == "missing" and status.partial_bytes == 1_000_000
    (got,) = store.fetch("tiny.aio3", urls={"weights": server.url("/last.ckpt")}, retries=0)
    assert got.resumed_from == 1_000_000 and got.sha256 == _sha(tiny_ckpt)
    assert catalogue.entry_status(catalogue.find_entry("tiny.aio3")).partial_bytes == 0


def test_every_official_entry_has_an_address_and_the_manual_steps_name_every_file():
    for entry in catalogue.entries():
        if entry.built_in:  # the built-in model needs no fetching
            continue
        sources = [catalogue.source_url(entry, spec) for spec in entry.files]  # raises where no address is published
        if entry.arch == "moce_ir":
            assert sources == [FOLDER] and entry.files[0]["drive_path"] == f"{entry.aliases[0]}/last.ckpt"
            assert catalogue.manual_steps(entry) == (
                f"download {entry.aliases[0]}/last.ckpt from the Google Drive folder {FOLDER} in a browser, "
                f"then run `irtool weights import last.ckpt --name {entry.name}`"
            )
    lora = catalogue.find_entry("lora_ir.setting1")
    hub = "https://huggingface.co/shallowdream204/LoRA-IR/resolve/main"
    assert catalogue.manual_steps(lora) == (
        f"download {hub}/setting1_ir.pth yourself, then run `irtool weights import setting1_ir.pth --name "
        f"lora_ir.setting1 --role ir`; download {hub}/setting1_router.pth yourself, then run `irtool weights import "
        "setting1_router.pth --name lora_ir.setting1 --role router`"
    )
    with pytest.raises(WeightsNotFoundError) as exc:
        catalogue.resolve("lora_ir.setting1")
    message = str(exc.value)
    assert "run `irtool weights fetch lora_ir.setting1`" in message and catalogue.manual_steps(lora) in message


def test_source_urls(manifest, monkeypatch):
    entry = catalogue.find_entry("tiny.aio3")
    folder = dict(entry.files[0], drive_folder=FOLDER, drive_path="Tiny_AIO3/last.ckpt")
    assert catalogue.source_url(entry, folder) == FOLDER
    spec = dict(folder, drive_id="1AbCdEfGhIjKlMn")  # a file id is used before the folder
    assert catalogue.source_url(entry, spec) == "https://drive.google.com/uc?id=1AbCdEfGhIjKlMn"
    assert catalogue.source_url(entry, dict(spec, url="https://a.org/x")) == "https://a.org/x"
    monkeypatch.setenv(catalogue.MIRROR_ENV, "http://mirror.lan/irtool/")
    assert catalogue.source_url(entry, spec) == "http://mirror.lan/irtool/tiny.aio3/last.ckpt"
    assert catalogue.source_url(entry, spec, {"weights": "http://b.lan/w"}) == "http://b.lan/w"
    assert catalogue.url_overrides("pair.test", ["router=http://h/r.pth?a=b", "ir=http://h/i.pth"]) == {
        "router": "http://h/r.pth?a=b",
        "ir": "http://h/i.pth",
    }
    assert catalogue.url_overrides("tiny.aio3", ["http://h/x?y=z"]) == {"weights": "http://h/x?y=z"}
    with pytest.raises(IrtoolError, match="pair.test has 2 files; write --url ROLE=URL with ROLE one of ir, router"):
        catalogue.url_overrides("pair.test", ["http://h/x"])
    with pytest.raises(IrtoolError, match="only http:// and https:// URLs"):
        catalogue.url_overrides("tiny.aio3", ["file:///tmp/last.ckpt"])


# --------------------------------------------------------------------------------------------------------------------
# Import, convert, verify, remove


def test_import_under_a_manifest_name_round_trips(manifest, tiny_ckpt, tiny_model):
    got = store.import_checkpoint(tiny_ckpt, name="TINY_aio3")
    entry = catalogue.find_entry("tiny.aio3")
    assert got.name == "tiny.aio3" and got.role == "weights" and got.variant == "tiny" and not got.local
    assert got.path == entry.folder / "weights.safetensors" and got.source_sha256 == _sha(tiny_ckpt)
    from safetensors import safe_open

    with safe_open(str(got.path), framework="pt") as f:
        meta = f.metadata()
    assert meta["irtool.arch"] == "moce_ir" and json.loads(meta["irtool.config"]) == VARIANTS["tiny"].to_dict()
    assert meta["irtool.name"] == "tiny.aio3" and meta["irtool.source_sha256"] == _sha(tiny_ckpt)
    assert meta["irtool.source_file"] == "last.ckpt" and meta["irtool.variant"] == "tiny"
    assert catalogue.entry_status(entry).status == "imported"
    assert catalogue.resolve("tiny.aio3") == {"weights": got.path}
    loaded = irtool.load_model("tiny.aio3", device="cpu")
    assert loaded.config == tiny_model.config and _same_weights(loaded, tiny_model)
    (check,) = store.verify("tiny.aio3")
    assert (
        check.ok
        and check.against == "record"
        and check.message == "sha256 matches the record; loads strictly as MoCE-IR tiny"
    )
    # importing the very same file again changes nothing
    again = store.import_checkpoint(tiny_ckpt, name="tiny.aio3")
    assert again.already and again.sha256 == got.sha256


def test_import_refuses_what_an_entry_is_not(manifest, tmp_path, tiny_ckpt):
    odd = tmp_path / "odd.pth"
    torch.save(random_moce(ODD).state_dict(), odd)
    with pytest.raises(
        CheckpointError, match=r"odd\.pth: MoCE-IR not a released config \(dim=8 instead of 16, .*\), not tiny"
    ):
        store.import_checkpoint(odd, name="tiny.aio3")
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, foreign)
    with pytest.raises(CheckpointError, match=r"resnet\.pth: not a MoCE-IR"):
        store.import_checkpoint(foreign, name="tiny.aio3")
    manifest.file("tiny.aio3", sha256="1" * 64)
    with pytest.raises(
        ChecksumError,
        match=r"not the released tiny\.aio3 file \(sha256 [0-9a-f]{64}, the manifest says 1{64}\); import it without --name",
    ):
        store.import_checkpoint(tiny_ckpt, name="tiny.aio3")
    assert not catalogue.cache_dir().exists() or not any(catalogue.cache_dir().rglob("*.safetensors"))


def test_import_picks_the_role_by_architecture(manifest, tiny_ckpt):
    got = store.import_checkpoint(tiny_ckpt, name="pair.test")
    assert got.role == "ir" and got.path.name == "ir.safetensors"
    entry = catalogue.find_entry("pair.test")
    assert catalogue.entry_status(entry).status == "partial"
    with pytest.raises(WeightsNotFoundError, match=r"pair\.test: not downloaded yet \(router\.pth missing"):
        catalogue.resolve("pair.test")
    with pytest.raises(CheckpointError, match=r"a MoCE-IR checkpoint, but pair\.test expects future_router \(router\)"):
        store.import_checkpoint(tiny_ckpt, name="pair.test", role="router")
    with pytest.raises(IrtoolError, match="--role backbone: one of weights, ir, router"):
        store.import_checkpoint(tiny_ckpt, name="pair.test", role="backbone")


def test_import_as_a_local_entry_works_everywhere(manifest, tmp_path, tiny_ckpt, tiny_model):
    run = tmp_path / "my_run_7"
    run.mkdir()
    shutil.copy(tiny_ckpt, run / "last.ckpt")
    got = store.import_checkpoint(run / "last.ckpt")  # a generic stem: named after its folder
    assert got.name == "my_run_7" and got.local and got.variant == "tiny"
    local = json.loads(catalogue.local_manifest_path().read_text())
    assert local["models"]["my_run_7"]["files"][0]["sha256"] == got.sha256
    assert [e.message for e in _validator().iter_errors(local)] == []
    assert irtool.load_model("my_run_7", device="cpu").config == VARIANTS["tiny"]
    result = runner.invoke(app, ["inspect", "my_run_7", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["config"]["dim"] == 16
    named = store.import_checkpoint(tiny_ckpt, name="denoiser-v2")
    assert named.name == "denoiser-v2" and catalogue.find_entry("DENOISER-V2").local
    statuses = {s.name: s for s in catalogue.statuses()}
    assert statuses["my_run_7"].status == "imported" and statuses["my_run_7"].local

    # a different file under the same name needs --force
    other = tmp_path / "other.pth"
    torch.save(random_moce(VARIANTS["tiny"], seed=9).state_dict(), other)
    with pytest.raises(IrtoolError, match=r"denoiser-v2: already holds a different weights file .*--force"):
        store.import_checkpoint(other, name="denoiser-v2")
    replaced = store.import_checkpoint(other, name="denoiser-v2", force=True)
    assert replaced.source_sha256 == _sha(other)
    assert not _same_weights(irtool.load_model("denoiser-v2"), tiny_model)

    removed = store.remove("denoiser-v2")
    assert removed.freed > 0 and catalogue.find_entry("denoiser-v2") is None
    with pytest.raises(WeightsNotFoundError):
        irtool.load_model("denoiser-v2")


def test_import_names(manifest, tmp_path, tiny_ckpt):
    official = tmp_path / "MoCE_IR_S_AIO3"
    official.mkdir()
    shutil.copy(tiny_ckpt, official / "last.ckpt")
    catalogue.load_manifest.cache_clear()
    with pytest.MonkeyPatch.context() as mp:  # the real manifest, where MoCE_IR_S_AIO3 is an official id
        mp.setattr(catalogue, "manifest_path", lambda: REPO / "weights_manifest.json")
        catalogue.load_manifest.cache_clear()
        with pytest.raises(
            IrtoolError,
            match=r"its name MoCE_IR_S_AIO3 is the official entry moce_ir_s\.aio3; pass --name moce_ir_s\.aio3",
        ):
            store.import_checkpoint(official)  # a folder names its last.ckpt
    catalogue.load_manifest.cache_clear()
    for bad in ("a/b", ".hidden", "x" * 101, "net.pth", "local_manifest.json"):
        with pytest.raises(IrtoolError, match=f"--name {bad}"):
            store.import_checkpoint(tiny_ckpt, name=bad)
    assert store.derive_name(Path("/x/runs/epoch=99-step=1000.ckpt")) == "runs"
    assert store.derive_name(Path("/x/My Net (v2).pth")) == "My_Net_v2"


def test_an_unsafe_pickle_is_imported_only_when_trusted(manifest, tmp_path, tiny_model):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": tiny_model.state_dict(), "extra": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError):
        store.import_checkpoint(path)
    got = store.import_checkpoint(path, trust=True)
    assert irtool.load_model(got.name).config == VARIANTS["tiny"]  # the copy needs no trust


def test_convert_writes_a_loadable_safetensors_and_leaves_the_cache_alone(tmp_path, tiny_model):
    src = tmp_path / "odd.pth"
    original = random_moce(ODD, seed=4)
    torch.save({"params": original.state_dict()}, src)
    before = _sha(src)
    got = store.convert(src, tmp_path / "odd.safetensors")
    assert got.arch == "moce_ir" and got.variant is None and got.config == {**ODD.to_dict(), "top_k": 1}
    assert _sha(src) == before and not catalogue.cache_dir().exists()
    loaded = irtool.load_model(got.path)
    assert loaded.config == irtool.load_model(src).config and _same_weights(loaded, original)
    with pytest.raises(IrtoolError, match="exists; pass --force"):
        store.convert(src, tmp_path / "odd.safetensors")
    assert store.convert(src, tmp_path / "odd.safetensors", force=True).sha256 == got.sha256
    with pytest.raises(IrtoolError, match="must be a .safetensors file"):
        store.convert(src, tmp_path / "odd.pth")
    with pytest.raises(IrtoolError, match="is the input"):
        store.convert(got.path, got.path, force=True)

    # --dtype fp16 halves the file; loading casts back to fp32, within fp16 rounding of the original
    half = store.convert(src, tmp_path / "odd16.safetensors", dtype="fp16")
    assert half.size < 0.6 * got.size
    from safetensors import safe_open

    with safe_open(str(half.path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}
    restored = irtool.load_model(half.path).state_dict()
    for key, value in original.state_dict().items():
        assert restored[key].dtype == value.dtype
        assert torch.allclose(restored[key], value, rtol=1e-3, atol=1e-4), key
    with pytest.raises(IrtoolError, match="--dtype fp8: not one of"):
        store.convert(src, tmp_path / "odd8.safetensors", dtype="fp8")

    # tied tensors (one tensor under two keys, which safetensors refuses to write) are written apart
    sd = tiny_model.state_dict()
    a, b = "dec.0.2.layers.0.ffn.dwconv.weight", "dec.0.2.layers.1.ffn.dwconv.weight"
    assert sd[a].shape == sd[b].shape
    torch.save({**sd, b: sd[a]}, tmp_path / "tied.pth")
    converted = store.convert(tmp_path / "tied.pth", tmp_path / "tied.safetensors")
    loaded = irtool.load_model(converted.path).state_dict()
    assert torch.equal(loaded[a], sd[a]) and torch.equal(loaded[b], sd[a])


def test_verify_catches_changed_files(manifest, server, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    server.file("/last.ckpt", data)
    manifest.file("tiny.aio3", url=server.url("/last.ckpt"), sha256=_sha(tiny_ckpt))
    (got,) = store.fetch("tiny.aio3")
    (check,) = store.verify()
    assert check.ok and check.against == "manifest" and check.expected == _sha(tiny_ckpt)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # inside a tensor: still loads, but is not the file
    got.path.write_bytes(bytes(damaged))
    (check,) = store.verify("tiny.aio3")
    assert not check.ok and "differs from the manifest's" in check.message
    # a file placed by hand has no record: checked by loading only
    got.path.write_bytes(data)
    (got.path.parent / "state.json").unlink()
    manifest.file("tiny.aio3", sha256=None)
    (check,) = store.verify("tiny.aio3")
    assert check.ok and check.expected is None and check.message.startswith("no checksum to compare with")
    got.path.write_bytes(data[: len(data) // 2])
    (check,) = store.verify("tiny.aio3")
    assert not check.ok and "truncated" in check.message


def test_remove(manifest, tiny_ckpt):
    with pytest.raises(WeightsNotFoundError, match=r"tiny\.aio3: nothing in the cache"):
        store.remove("tiny.aio3")
    with pytest.raises(WeightsNotFoundError, match="nope: not a known model name"):
        store.remove("nope")
    store.import_checkpoint(tiny_ckpt, name="tiny.aio3")
    partial = catalogue.find_entry("tiny.aio3").downloads / "last.ckpt.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"12345")
    removed = store.remove("tiny.aio3")
    assert set(removed.paths) == {catalogue.find_entry("tiny.aio3").folder, partial.parent}
    assert not partial.exists() and catalogue.entry_status(catalogue.find_entry("tiny.aio3")).status == "missing"


# --------------------------------------------------------------------------------------------------------------------
# The commands


def test_weights_list_is_instant_and_torch_free():
    probe = (
        "import sys; from irtool.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['weights', 'list', '--json']); assert r.exit_code == 0, r.output; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_cli_fetch_import_verify_convert_remove(manifest, server, tiny_ckpt, tmp_path):
    server.file("/last.ckpt", tiny_ckpt.read_bytes())
    listed = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    assert {m["name"]: m["status"] for m in listed["models"]} == {"tiny.aio3": "missing", "pair.test": "missing"}

    result = runner.invoke(app, ["weights", "fetch", "tiny.aio3", "--url", server.url("/last.ckpt")])
    assert result.exit_code == 0, result.output
    assert f"saved to {catalogue.find_entry('tiny.aio3').folder / 'last.ckpt'}" in result.stdout
    assert "loads strictly as MoCE-IR tiny" in result.stdout
    table = runner.invoke(app, ["weights", "list"])
    assert table.exit_code == 0 and "cached" in table.stdout

    failed = runner.invoke(app, ["weights", "fetch", "pair.test", "tiny.aio3"])
    assert failed.exit_code == 1
    assert failed.stderr.count("error:") == 1 and "pair.test: no direct download link" in failed.stderr
    assert "tiny.aio3 (weights): already in the cache" in failed.stdout
    assert runner.invoke(app, ["weights", "fetch", "a", "b", "--url", "http://127.0.0.1:1/x"]).exit_code == 2

    result = runner.invoke(app, ["weights", "import", str(tiny_ckpt), "--name", "mine", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "mine"

    result = runner.invoke(app, ["weights", "verify", "--json"])
    assert result.exit_code == 0 and {(r["name"], r["ok"]) for r in json.loads(result.stdout)} == {
        ("tiny.aio3", True),
        ("mine", True),
    }
    mine = catalogue.find_entry("mine").folder / "weights.safetensors"
    mine.write_bytes(mine.read_bytes()[:-10] + b"0123456789")
    result = runner.invoke(app, ["weights", "verify"])
    assert result.exit_code == 1 and "FAILED mine (weights)" in result.stdout
    assert result.stderr.strip().startswith("error: mine (weights): sha256")

    out = tmp_path / "c.safetensors"
    result = runner.invoke(app, ["weights", "convert", str(tiny_ckpt), str(out)])
    assert result.exit_code == 0 and out.is_file() and "moce_ir tiny" in result.stdout
    again = runner.invoke(app, ["weights", "convert", str(tiny_ckpt), str(out)])
    assert again.exit_code == 1 and again.stderr.count("\n") == 1 and "exists; pass --force" in again.stderr

    shown = json.loads(runner.invoke(app, ["weights", "show", "Tiny_AIO3", "--json"]).stdout)
    assert (
        shown["name"] == "tiny.aio3"
        and shown["status"]["status"] == "cached"
        and shown["state"]["weights"]["how"] == "fetched"
    )
    assert runner.invoke(app, ["weights", "show", "tiny.aio3"]).exit_code == 0

    result = runner.invoke(app, ["weights", "remove", "mine"])
    assert result.exit_code == 0 and "mine: removed" in result.stdout
    assert runner.invoke(app, ["weights", "remove", "mine"]).exit_code == 1
