"""irtool.weights.download against a local HTTP server (127.0.0.1 only): resume, redirects, errors, checksums, Drive pages."""

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


# -- Google Drive's "can't scan this file for viruses" page, simulated


def _drive_blob(server, data):
    server.file("/blob", data)
    return server.routes.pop("/blob")


def test_drive_confirmation_form(server, tmp_path):
    blob = _drive_blob(server, DATA)
    server.page(
        "/uc",
        f"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
        <p>last.ckpt (300K) is too large for Google Drive to scan for viruses.</p>
        <form id="download-form" action="{server.url("/download")}" method="get">
        <input type="submit" id="uc-download-link" class="goog-inline-block" value="Download anyway"/>
        <input type="hidden" name="id" value="1AbCdEfGhIjK"><input type="hidden" name="export" value="download">
        <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5f1c-aa"></form></body></html>""",
    )

    def usercontent(h, q):
        if q == {"id": "1AbCdEfGhIjK", "export": "download", "confirm": "t", "uuid": "5f1c-aa"}:
            blob(h, q)
        else:
            h.reply(400, b"bad confirmation")

    server.routes["/download"] = usercontent
    got = _get(tmp_path / "last.ckpt", server.url("/uc?export=download&id=1AbCdEfGhIjK"), sha256=SHA)
    assert got.path.read_bytes() == DATA and got.url.startswith(server.url("/download?"))


def test_drive_confirmation_token_in_a_cookie_and_in_a_link(server, tmp_path):
    blob = _drive_blob(server, DATA)

    def uc(h, q):  # the older flow: the page sets a download_warning cookie; the file comes with confirm=TOKEN
        if q.get("confirm") == "Xy12" and "download_warning_4711=Xy12" in h.headers.get("Cookie", ""):
            blob(h, q)
        else:
            h.reply(
                200,
                b"<html><title>Google Drive - Virus scan warning</title>Download anyway?</html>",
                "text/html; charset=utf-8",
                {"Set-Cookie": "download_warning_4711=Xy12; Path=/"},
            )

    server.routes["/uc"] = uc
    got = _get(tmp_path / "a.ckpt", server.url("/uc?export=download&id=AAA"), sha256=SHA)
    assert got.path.read_bytes() == DATA and "confirm=Xy12" in got.url

    def uc_link(h, q):  # a page that links to the confirmed URL
        if q.get("confirm") == "Zz9":
            blob(h, q)
        else:
            h.reply(
                200,
                b'<html><a id="uc-download-link" href="/uc2?export=download&amp;confirm=Zz9&amp;id=BBB">'
                b"Download anyway</a></html>",
                "text/html",
            )

    server.routes["/uc2"] = uc_link
    got = _get(tmp_path / "b.ckpt", server.url("/uc2?export=download&id=BBB"), sha256=SHA)
    assert got.path.read_bytes() == DATA


def test_drive_refusals_are_explained(server, tmp_path):
    server.page(
        "/quota",
        "<html><title>Google Drive - Quota exceeded</title>Too many users have viewed or "
        "downloaded this file recently.</html>",
    )
    with pytest.raises(DownloadError, match="too many downloads of this file recently"):
        _get(tmp_path / "w.bin", server.url("/quota"))
    server.page("/login", "<html><head><title>Sign in - Google Accounts</title></head><body>Email</body></html>")
    with pytest.raises(DownloadError, match=r"sent a web page \('Sign in - Google Accounts'\), not the file"):
        _get(tmp_path / "w.bin", server.url("/login"))
    server.page(
        "/loop",
        f'<form id="download-form" action="{server.url("/loop")}"><input type="hidden" name="confirm" value="t"></form>',
    )
    with pytest.raises(DownloadError, match="still a web page after 3 confirmation steps"):
        _get(tmp_path / "w.bin", server.url("/loop"))
    assert list(tmp_path.iterdir()) == []
