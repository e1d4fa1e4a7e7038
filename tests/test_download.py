"""irtool.weights.download against a local HTTP server (127.0.0.1 only): resume, redirects, errors, checksums, web pages
in place of the file. Google Drive (through gdown) is tests/test_drive.py."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest
from local_server import LocalServer, without_proxies

from irtool.errors import ChecksumError, DownloadError
from irtool.weights.download import download, sha256_file

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server(monkeypatch):
    without_proxies(monkeypatch)
    with LocalServer() as s:
        yield s


def _get(dest, url, **kw):
    return download(url, dest, timeout=5, backoff_s=0, **kw)


def test_download_checks_and_moves_into_place(server, tmp_path):
    server.file("/w.bin", DATA)
    seen = []
    got = _get(
        tmp_path / "w.bin", server.url("/w.bin"), sha256=SHA, size=len(DATA), progress=lambda d, t: seen.append((d, t))
    )
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert got.sha256 == SHA == sha256_file(got.path) and got.size == len(DATA) and got.resumed_from == 0
    assert seen[0] == (0, len(DATA)) and seen[-1] == (len(DATA), len(DATA))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]  # no .part, no sidecar


def test_a_cut_connection_keeps_the_part_and_the_next_call_resumes(server, tmp_path):
    server.file("/w.bin", DATA, cuts=[120_000])
    dest = tmp_path / "w.bin"
    with pytest.raises(
        DownloadError, match=r"connection closed after 0\.1 MB of 0\.3 MB.*kept in .*w\.bin\.part.*resume"
    ) as exc:
        _get(dest, server.url("/w.bin"), sha256=SHA, retries=0)
    assert "\n" not in str(exc.value) and not dest.exists()
    assert (tmp_path / "w.bin.part").read_bytes() == DATA[:120_000]
    got = _get(dest, server.url("/w.bin"), sha256=SHA, retries=0)
    assert got.resumed_from == 120_000 and dest.read_bytes() == DATA
    method, path, headers = server.requests[-1]
    assert headers["Range"] == "bytes=120000-" and headers["If-Range"] == '"v1"'
    assert not (tmp_path / "w.bin.part").exists()


def test_retries_resume_within_one_call(server, tmp_path):
    server.file("/w.bin", DATA, cuts=[50_000, 100_000])
    got = _get(tmp_path / "w.bin", server.url("/w.bin"), sha256=SHA, retries=2)
    assert got.resumed_from == 150_000 and got.path.read_bytes() == DATA
    assert [h.get("Range") for _, _, h in server.requests] == [None, "bytes=50000-", "bytes=150000-"]


def test_a_file_changed_on_the_server_restarts_instead_of_splicing(server, tmp_path):
    server.file("/w.bin", DATA, cuts=[100_000])
    with pytest.raises(DownloadError):
        _get(tmp_path / "w.bin", server.url("/w.bin"), retries=0)
    new = os.urandom(200_000)
    server.file("/w.bin", new, etag='"v2"')  # If-Range "v1" no longer matches: the server sends the whole file
    got = _get(tmp_path / "w.bin", server.url("/w.bin"), retries=0)
    assert got.resumed_from == 0 and got.path.read_bytes() == new and got.sha256 == hashlib.sha256(new).hexdigest()


def test_a_server_without_ranges_restarts_from_zero(server, tmp_path):
    server.file("/w.bin", DATA, cuts=[100_000], ranges=False)
    got = _get(tmp_path / "w.bin", server.url("/w.bin"), sha256=SHA, retries=1)
    assert got.resumed_from == 0 and got.path.read_bytes() == DATA


def test_a_part_from_another_url_is_not_resumed(server, tmp_path):
    (tmp_path / "w.bin.part").write_bytes(b"x" * 1000)
    (tmp_path / "w.bin.part.json").write_text(json.dumps({"url": "http://127.0.0.1:1/other", "validator": '"v1"'}))
    server.file("/w.bin", DATA)
    got = _get(tmp_path / "w.bin", server.url("/w.bin"), sha256=SHA)
    assert "Range" not in server.requests[0][2] and got.path.read_bytes() == DATA


def test_a_complete_part_is_finished_after_416(server, tmp_path):
    url = server.url("/w.bin")
    (tmp_path / "w.bin.part").write_bytes(DATA)
    (tmp_path / "w.bin.part.json").write_text(json.dumps({"url": url, "validator": '"v1"'}))
    server.file("/w.bin", DATA)
    got = _get(tmp_path / "w.bin", url, sha256=SHA)
    assert got.resumed_from == len(DATA) and got.path.read_bytes() == DATA


def test_redirects_are_followed(server, tmp_path):
    server.file("/cdn/w.bin", DATA)
    server.redirect("/resolve/w.bin", "/moved/w.bin", 302)  # relative Location
    server.redirect("/moved/w.bin", server.url("/cdn/w.bin"), 307)
    got = _get(tmp_path / "w.bin", server.url("/resolve/w.bin"), sha256=SHA)
    assert got.url == server.url("/cdn/w.bin") and got.path.read_bytes() == DATA


@pytest.mark.parametrize(
    "code,message", [(404, "HTTP 404 Not Found: no such file there"), (403, "HTTP 403 Forbidden: access denied")]
)
def test_client_errors_are_one_line_and_leave_nothing(server, tmp_path, code, message):
    server.status("/w.bin", code)
    with pytest.raises(DownloadError, match=message) as exc:
        _get(tmp_path / "w.bin", server.url("/w.bin"), retries=3)
    assert server.url("/w.bin") in str(exc.value) and "\n" not in str(exc.value)
    assert len(server.requests) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_then_reported(server, tmp_path):
    server.status("/w.bin", 500)
    with pytest.raises(DownloadError, match=r"HTTP 500 Internal Server Error \(tried 2 times\); nothing was kept"):
        _get(tmp_path / "w.bin", server.url("/w.bin"), retries=1)
    assert len(server.requests) == 2 and list(tmp_path.iterdir()) == []


def test_offline_is_one_clear_line(tmp_path, monkeypatch):
    without_proxies(monkeypatch)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        DownloadError, match=rf"127\.0\.0\.1:{port}/w\.bin: could not connect \(connection refused\); nothing was kept"
    ):
        _get(tmp_path / "w.bin", f"http://127.0.0.1:{port}/w.bin", retries=0)


def test_a_checksum_mismatch_keeps_nothing(server, tmp_path):
    server.file("/w.bin", DATA)
    with pytest.raises(ChecksumError, match=rf"sha256 {SHA} instead of {'0' * 64}.*nothing was kept"):
        _get(tmp_path / "w.bin", server.url("/w.bin"), sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    # a size that disagrees with the server's is refused before the transfer
    with pytest.raises(ChecksumError, match=rf"offers {len(DATA)} bytes, the manifest says 12"):
        _get(tmp_path / "w.bin", server.url("/w.bin"), size=12)
    assert list(tmp_path.iterdir()) == []


def test_a_mismatch_after_a_resume_also_keeps_nothing(server, tmp_path):
    server.file("/w.bin", DATA, cuts=[100_000])
    with pytest.raises(DownloadError):
        _get(tmp_path / "w.bin", server.url("/w.bin"), retries=0)
    with pytest.raises(ChecksumError):
        _get(tmp_path / "w.bin", server.url("/w.bin"), sha256="f" * 64, retries=0)
    assert list(tmp_path.iterdir()) == []


def test_a_web_page_instead_of_the_file_is_refused(server, tmp_path):
    server.page("/login", "<html><head><title>Sign in - Example &amp; Co</title></head><body>Email</body></html>")
    with pytest.raises(DownloadError, match=r"sent a web page \('Sign in - Example & Co'\), not the file") as exc:
        _get(tmp_path / "w.bin", server.url("/login"))
    assert "\n" not in str(exc.value) and list(tmp_path.iterdir()) == []
    server.file("/attached", b"<html>a file that happens to be a page</html>", content_type="text/html",
                headers={"Content-Disposition": 'attachment; filename="page.html"'})  # fmt: skip
    assert _get(tmp_path / "page.html", server.url("/attached")).path.read_bytes().startswith(b"<html>")
