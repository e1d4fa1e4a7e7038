"""irtool.weights.drive: gdown against a local server that serves Google Drive's pages (folder listings, the virus-scan
confirmation, the file, the quota page); gdown's requests for Google's hosts are routed there, nothing leaves the
machine."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest
from local_server import GoogleDrive, LocalServer, drive_id, route_google_to, without_proxies

from irtool.errors import ChecksumError, DownloadError
from irtool.weights import catalogue
from irtool.weights import drive as drive_module
from irtool.weights.drive import download_from_drive, is_drive_folder, is_drive_url

FOLDER_ID = "1pQBceb8cCPdIzbqbNNGqV5qNXzzqL4uK"
FOLDER = f"https://drive.google.com/drive/folders/{FOLDER_ID}"
BIG = os.urandom(1_300_000)  # over the virus-scan threshold, and more than two of gdown's 512 kB chunks
SMALL = os.urandom(20_000)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def drive(monkeypatch, tmp_path):
    without_proxies(monkeypatch)
    monkeypatch.setattr(drive_module, "GDOWN_COOKIES", tmp_path / "gdown-cookies.txt")  # none unless a test writes it
    with LocalServer() as server:
        route_google_to(server, monkeypatch)
        yield GoogleDrive(server, scan_above=100_000)


def _fetch(dest, url=FOLDER, **kw):
    return download_from_drive(url, dest, timeout=5, **{"retries": 0, **kw})


def _left(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_drive_addresses():
    assert is_drive_url(FOLDER) and is_drive_folder(FOLDER)
    assert is_drive_folder("https://drive.google.com/drive/u/0/folders/1abc?usp=sharing")
    assert is_drive_url("https://drive.google.com/uc?id=1abc") and not is_drive_folder(
        "https://drive.google.com/uc?id=1"
    )
    assert not is_drive_url("https://huggingface.co/x/resolve/main/y.pth") and not is_drive_url("http://127.0.0.1/uc")


def test_a_folder_fetch_picks_the_file_by_its_path(drive, tmp_path):
    files = {"MoCE_IR_AIO3/last.ckpt": BIG, "MoCE_IR_S_AIO3/last.ckpt": SMALL, "results/AIO3/rain/1.png": b"png"}
    ids = drive.folder(FOLDER_ID, "MoCE-IR", files)
    seen = []
    got = _fetch(
        tmp_path / "last.ckpt", path="MoCE_IR_AIO3/last.ckpt", sha256=_sha(BIG), progress=lambda *a: seen.append(a)
    )
    assert got.path.read_bytes() == BIG and got.sha256 == _sha(BIG) and got.size == len(BIG) and got.resumed_from == 0
    assert got.url == f"https://drive.google.com/uc?id={ids['MoCE_IR_AIO3/last.ckpt']}"
    assert seen[-1] == (len(BIG), len(BIG))
    assert _left(tmp_path) == ["last.ckpt"]  # no partial file, no record
    asked = [path for _, path, _ in drive.server.requests]
    assert asked[0] == f"/drive.google.com/embeddedfolderview?id={FOLDER_ID}"
    assert any("confirm=t" in p for p in asked)  # the virus-scan page was answered
    # the small file of the same name in another subfolder, without a confirmation page; a path's end is enough
    got = _fetch(tmp_path / "s" / "last.ckpt", path="/MoCE_IR_S_AIO3/last.ckpt")
    assert got.path.read_bytes() == SMALL
    assert _fetch(tmp_path / "png" / "x.png", path="rain/1.png").path.read_bytes() == b"png"


def test_every_manifest_entry_on_drive_is_fetchable(drive, tmp_path):
    """Each file the manifest places on Google Drive, shared as the manifest says (in a folder at its drive_path, or
    under its file id), is fetched from the address `source_url` gives."""
    on_drive = [(e, s) for e in catalogue.entries() for s in e.files if s.get("drive_folder") or s.get("drive_id")]
    assert len(on_drive) >= 6  # the six MoCE-IR checkpoints at least
    content = {(e.name, s["role"]): os.urandom(1000) + e.name.encode() for e, s in on_drive}
    folders: dict[str, dict[str, bytes]] = {}
    for entry, spec in on_drive:
        if spec.get("drive_id"):
            drive.file(content[entry.name, spec["role"]], spec["filename"], file_id=spec["drive_id"])
        else:
            folders.setdefault(spec["drive_folder"], {})[spec["drive_path"]] = content[entry.name, spec["role"]]
    for url, files in folders.items():
        drive.folder(url.rstrip("/").rsplit("/", 1)[1].split("?")[0], "shared", {**files, "results/readme.txt": b"x"})
    for entry, spec in on_drive:
        url = catalogue.source_url(entry, spec)
        got = _fetch(tmp_path / entry.name / spec["filename"], url=url, path=spec.get("drive_path"))
        assert got.path.read_bytes() == content[entry.name, spec["role"]], entry.name


def test_a_wrong_sha256_or_size_keeps_nothing(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG})
    with pytest.raises(ChecksumError, match=rf"sha256 {_sha(BIG)} instead of {'0' * 64}\); nothing was kept$"):
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt", sha256="0" * 64)
    assert _left(tmp_path) == []
    with pytest.raises(ChecksumError, match=rf"{len(BIG)} bytes instead of 12\); nothing was kept"):
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt", size=12)
    assert _left(tmp_path) == []


def test_the_quota_page_is_one_line_saying_what_to_do(drive, tmp_path):
    file_id = drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG})["a/last.ckpt"]
    drive.over_quota.add(file_id)
    with pytest.raises(DownloadError) as exc:
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt")
    assert str(exc.value) == (
        f"https://drive.google.com/uc?id={file_id}: Google Drive's download quota for this file is used up (too many "
        "downloads in the last 24 hours); run the same command again later, or sign in: export your Google cookies to "
        f"{drive_module.GDOWN_COOKIES} (gdown's FAQ) and run it again"
    )
    assert _left(tmp_path) == []


def test_an_interrupted_download_keeps_its_part_beside_the_destination_and_resumes(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG}, cuts={"a/last.ckpt": [1_100_000]})
    dest = tmp_path / "last.ckpt"
    with pytest.raises(
        DownloadError,
        match=r"connection lost before the end of the file; 1\.0 MB kept in .*\.part; run the same command again to resume$",
    ):
        _fetch(dest, path="a/last.ckpt")
    assert not dest.exists()
    (part,) = [p for p in tmp_path.iterdir() if p.suffix == ".part"]
    assert part.read_bytes() == BIG[: 1 << 20]
    assert json.loads((tmp_path / "last.ckpt.drive.json").read_text())["link"].endswith(
        drive_id(f"{FOLDER_ID}/a/last.ckpt")
    )
    got = _fetch(dest, path="a/last.ckpt", sha256=_sha(BIG))
    assert got.resumed_from == 1 << 20 and dest.read_bytes() == BIG and _left(tmp_path) == ["last.ckpt"]
    headers = drive.server.requests[-1][2]
    assert headers["Range"] == f"bytes={1 << 20}-" and headers["If-Range"] == '"v1"'


def test_retries_resume_within_one_call(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG}, cuts={"a/last.ckpt": [600_000]})
    got = _fetch(tmp_path / "last.ckpt", path="a/last.ckpt", retries=1)
    assert got.path.read_bytes() == BIG and got.sha256 == _sha(BIG)


@pytest.mark.parametrize("known_sha256", [True, False])
def test_a_file_changed_on_drive_starts_over(drive, tmp_path, known_sha256):
    """A new upload under the same id: one of another size is noticed from Drive's answer, one of the same size (a
    retrained checkpoint) by its sha256 where the manifest has it."""
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG}, cuts={"a/last.ckpt": [1_100_000]})
    with pytest.raises(DownloadError):
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt")
    new = os.urandom(len(BIG) if known_sha256 else len(BIG) + 5)
    drive.file(new, "last.ckpt", key=f"{FOLDER_ID}/a/last.ckpt", etag='"v2"')  # the same id, a new upload
    got = _fetch(tmp_path / "last.ckpt", path="a/last.ckpt", sha256=_sha(new) if known_sha256 else None)
    assert got.resumed_from == 0 and got.path.read_bytes() == new and got.sha256 == _sha(new)
    assert _left(tmp_path) == ["last.ckpt"]


def test_a_part_of_another_file_is_not_resumed(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": BIG, "b/last.ckpt": SMALL}, cuts={"a/last.ckpt": [1_100_000]})
    with pytest.raises(DownloadError):
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt")
    got = _fetch(tmp_path / "last.ckpt", path="b/last.ckpt")
    assert got.resumed_from == 0 and got.path.read_bytes() == SMALL and _left(tmp_path) == ["last.ckpt"]
    assert "Range" not in drive.server.requests[-1][2]


def test_a_path_not_in_the_folder_names_what_is_there(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"MoCE_IR_AIO3/last.ckpt": SMALL, "MoCE_IR_AIO5/last.ckpt": SMALL, "x/a.png": b""})
    with pytest.raises(DownloadError) as exc:
        _fetch(tmp_path / "last.ckpt", path="MoCE_IR_S_AIO3/last.ckpt")
    assert str(exc.value) == (
        f"{FOLDER}: no MoCE_IR_S_AIO3/last.ckpt in the Google Drive folder; files named last.ckpt there: "
        "MoCE_IR_AIO3/last.ckpt, MoCE_IR_AIO5/last.ckpt"
    )
    with pytest.raises(DownloadError, match=r"last\.ckpt is in 2 places in the folder \(MoCE_IR_AIO3/last\.ckpt, "):
        _fetch(tmp_path / "last.ckpt", path="last.ckpt")
    with pytest.raises(DownloadError, match=rf"^https://drive\.google\.com/drive/folders/1{'0' * 32}: .*404"):
        _fetch(tmp_path / "last.ckpt", url=f"https://drive.google.com/drive/folders/1{'0' * 32}", path="a")
    assert _left(tmp_path) == []


def test_a_file_drive_will_not_hand_out_is_one_line(drive, tmp_path):
    with pytest.raises(DownloadError) as exc:
        _fetch(tmp_path / "last.ckpt", url=f"https://drive.google.com/file/d/1{'7' * 32}/view?usp=sharing")
    assert str(exc.value).startswith(
        f"https://drive.google.com/file/d/1{'7' * 32}/view?usp=sharing: Google Drive did not hand out the file (Cannot retrieve the public link"
    )
    assert "\n" not in str(exc.value) and "Check FAQ" not in str(exc.value) and _left(tmp_path) == []


def test_no_network_is_one_line(monkeypatch, tmp_path):
    without_proxies(monkeypatch)
    resolve = socket.getaddrinfo

    def offline(host, *args, **kwargs):
        if str(host).endswith("google.com"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(DownloadError) as exc:
        _fetch(tmp_path / "last.ckpt", path="a/last.ckpt", retries=2)
    assert str(exc.value) == (
        f"{FOLDER}: no network (drive.google.com could not be resolved); connect and run the same command again"
    )
    assert _left(tmp_path) == []


def test_a_refused_connection_is_one_line(monkeypatch, tmp_path):
    without_proxies(monkeypatch)
    with LocalServer() as server:
        route_google_to(server, monkeypatch)
    # the server is gone: Google's hosts now lead to a port nobody listens on
    with pytest.raises(DownloadError, match=r"uc\?id=1d+: could not connect \(connection refused\); nothing was kept$"):
        _fetch(tmp_path / "last.ckpt", url=f"https://drive.google.com/uc?id=1{'d' * 32}")
    assert _left(tmp_path) == []


def test_gdown_cookies_are_used_when_the_user_exported_them(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": SMALL})
    drive_module.GDOWN_COOKIES.write_text(
        "# Netscape HTTP Cookie File\n.google.com\tTRUE\t/\tTRUE\t4102444800\tSID\tsigned-in\n"
    )
    _fetch(tmp_path / "last.ckpt", path="a/last.ckpt")
    assert all("SID=signed-in" in headers.get("Cookie", "") for _, _, headers in drive.server.requests)


def test_two_downloads_of_one_file_do_not_share_its_part(drive, tmp_path):
    fcntl = pytest.importorskip("fcntl", reason="the lock is POSIX's flock")
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": SMALL})
    with open(tmp_path / "last.ckpt.drive.json", "a") as other:  # another process downloading the same file
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match=r"another irtool process is downloading this file; wait for it"):
            _fetch(tmp_path / "last.ckpt", path="a/last.ckpt")
    assert _fetch(tmp_path / "last.ckpt", path="a/last.ckpt").path.read_bytes() == SMALL


def test_an_unwritable_folder_is_one_line(drive, tmp_path):
    drive.folder(FOLDER_ID, "f", {"a/last.ckpt": SMALL})
    (tmp_path / "file").write_text("a file where the folder should be")
    with pytest.raises(DownloadError, match=r"file: cannot write the download there \("):
        _fetch(tmp_path / "file" / "last.ckpt", path="a/last.ckpt")


def test_a_page_gdown_cannot_read_is_one_line_that_says_what_to_do(drive, tmp_path, monkeypatch):
    def changed_pages(*args, **kwargs):
        raise KeyError("Content-Type")  # what gdown raises on an answer without the header it expects

    monkeypatch.setattr(drive_module.gdown, "download", changed_pages)
    with pytest.raises(DownloadError) as exc:
        _fetch(tmp_path / "last.ckpt", url=f"https://drive.google.com/uc?id=1{'e' * 32}")
    assert str(exc.value) == (
        f"https://drive.google.com/uc?id=1{'e' * 32}: gdown could not read Google Drive's answer (KeyError: "
        "'Content-Type'); Drive may have changed its pages: `pip install -U gdown`, or download the file in a browser"
    )


def test_a_silent_server_is_one_line_after_the_timeout(drive, tmp_path):
    def silent(h, q):
        time.sleep(1.5)
        h.reply(503, b"late")

    drive.server.routes["/drive.google.com/uc"] = silent
    with pytest.raises(DownloadError, match=r"uc\?id=1f+: no answer in time; nothing was kept$"):
        download_from_drive(
            f"https://drive.google.com/uc?id=1{'f' * 32}", tmp_path / "last.ckpt", timeout=0.3, retries=0
        )
    assert _left(tmp_path) == []
