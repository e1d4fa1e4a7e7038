"""A small HTTP server on 127.0.0.1 for download tests: files with Range support, redirects, errors and cut
connections, and `GoogleDrive`, which serves the pages Google Drive serves (folder listings, the virus-scan
confirmation page, the file, the quota page) to gdown's requests, routed here by `route_google_to`. It runs in a
daemon thread of the test process on a free port, every socket has a 5 s timeout, and leaving the `with` block shuts
it down; nothing ever leaves the machine."""

from __future__ import annotations

import hashlib
import html
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

Route = Callable[["Handler", dict], None]


class Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length).decode()
        self._dispatch(dict(urllib.parse.parse_qsl(body)))

    def _dispatch(self, form: dict | None = None) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if form:
            query.update(form)
        owner = self.server.owner
        owner.requests.append((self.command, self.path, dict(self.headers)))
        route = owner.routes.get(parts.path)
        if route is None:
            self.reply(404, b"not found", "text/plain")
        else:
            route(self, query)

    def reply(
        self, code: int, body: bytes = b"", content_type: str = "text/plain", headers: dict | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalServer


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def without_proxies(monkeypatch) -> None:
    """Unset proxy variables, so that urllib talks to 127.0.0.1 directly and never through another machine."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class LocalServer:
    """Routes are set per path (the query string goes to the route); `requests` records (method, path, headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    # -- routes

    def file(
        self,
        path: str,
        data: bytes,
        *,
        etag: str | None = '"v1"',
        cuts: list[int] | None = None,
        ranges: bool = True,
        content_type: str = "application/octet-stream",
        headers: dict | None = None,
    ) -> None:
        """Serve `data`, honouring `Range`/`If-Range` (unless ranges=False). `cuts`: for the first requests, the
        number of body bytes sent before the connection is dropped (one per request, consumed in order)."""
        self.routes[path] = file_route(data, etag=etag, cuts=cuts, ranges=ranges, content_type=content_type,
                                       headers=headers)  # fmt: skip

    def redirect(self, path: str, to: str, code: int = 302) -> None:
        self.routes[path] = lambda h, q: h.reply(code, b"", "text/plain", {"Location": to})

    def status(self, path: str, code: int, body: bytes = b"error") -> None:
        self.routes[path] = lambda h, q: h.reply(code, body, "text/plain")

    def page(self, path: str, html: str, headers: dict | None = None) -> None:
        self.routes[path] = lambda h, q: h.reply(200, html.encode(), "text/html; charset=utf-8", headers)


def file_route(
    data: bytes,
    *,
    etag: str | None = '"v1"',
    cuts: list[int] | None = None,
    ranges: bool = True,
    content_type: str = "application/octet-stream",
    headers: dict | None = None,
) -> Route:
    """The route that serves `data` (see `LocalServer.file`)."""
    pending = list(cuts or [])

    def route(h: Handler, query: dict) -> None:
        start = 0
        extra = dict(headers or {})
        if etag:
            extra["ETag"] = etag
        wanted = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if ranges and wanted and (if_range is None or if_range == etag):
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                h.reply(416, b"", content_type, {**extra, "Content-Range": f"bytes */{len(data)}"})
                return
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        h.send_response(206 if start or "Content-Range" in extra else 200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            h.send_header(key, value)
        h.end_headers()
        if pending:
            h.wfile.write(body[: pending.pop(0)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    return route


# --------------------------------------------------------------------------------------------------------------------
# Google Drive, as gdown meets it

GOOGLE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")

# The pages as Drive serves them (one line each: gdown reads the confirmation page line by line)
SCAN_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta http-equiv="content-type" '
    'content="text/html; charset=utf-8"/></head><body><div class="uc-main"><div id="uc-text"><p class="uc-warning-'
    'caption">Google Drive can\'t scan this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-'
    'name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large for Google to scan for viruses. Would '
    'you still like to download this file?</p><form id="download-form" action="https://drive.usercontent.google.com/'
    'download" method="get"><input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-'
    'action" value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export" '
    'value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">'
    "</form></div></div></body></html>"
)
QUOTA_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body><div class="uc-main"><div '
    'id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p><p '
    'class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the '
    "file again later. If the file you are trying to access is particularly large or is shared with many people, it "
    "may take up to 24 hours to be able to view or download the file. If you still can't access a file after 24 "
    "hours, contact your domain administrator.</p></div></div></body></html>"
)
NOT_FOUND_PAGE = "<!DOCTYPE html><html><head><title>Google Drive - Page Not Found</title></head><body>Sorry, the file you have requested does not exist.</body></html>"


def drive_id(text: str) -> str:
    """A Drive-like id made from `text` (33 characters: gdown's patterns want at least 25)."""
    return "1" + hashlib.sha256(text.encode()).hexdigest()[:32]


class GoogleDrive:
    """Drive's pages for gdown, served by a LocalServer under `/<host>/<path>` (see `route_google_to`).

    `folder(...)` shares files in a folder (subfolders made from their paths); `file(...)` shares one file. A file of
    `scan_above` bytes or more gets the virus-scan confirmation page first, as Drive does for large files; the ids in
    `over_quota` get the quota page instead of the file."""

    def __init__(self, server: LocalServer, scan_above: int = 100_000) -> None:
        self.server = server
        self.scan_above = scan_above
        self.folders: dict[str, tuple[str, list[tuple[str, str, bool]]]] = {}  # id -> (name, [(id, name, folder?)])
        self.files: dict[str, tuple[str, Route, int]] = {}  # id -> (name, route, size)
        self.over_quota: set[str] = set()
        server.routes["/drive.google.com/embeddedfolderview"] = self._listing
        server.routes["/drive.google.com/uc"] = self._uc
        server.routes["/drive.usercontent.google.com/download"] = self._download

    def folder(self, folder_id: str, name: str, files: dict[str, bytes], cuts: dict | None = None) -> dict[str, str]:
        """Share `files` ({path: bytes}) in the folder `folder_id`; returns {path: file id}. cuts: {path: [bytes sent
        before the connection drops, per request]}."""
        self.folders[folder_id] = (name, [])
        ids = {}
        for path, data in files.items():
            *dirs, filename = path.split("/")
            parent = folder_id
            for depth, sub_name in enumerate(dirs):
                sub = drive_id(f"{folder_id}/{'/'.join(dirs[: depth + 1])}")
                if sub not in self.folders:
                    self.folders[sub] = (sub_name, [])
                    self.folders[parent][1].append((sub, sub_name, True))
                parent = sub
            ids[path] = self.file(data, filename, key=f"{folder_id}/{path}", cuts=(cuts or {}).get(path))
            self.folders[parent][1].append((ids[path], filename, False))
        return ids

    def file(
        self, data: bytes, name: str, *, key: str | None = None, file_id: str | None = None, cuts=None, etag='"v1"'
    ) -> str:
        """Share one file; returns its id (`file_id`, else one made from `key`, else from `name`)."""
        file_id = file_id or drive_id(key or name)
        disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
        self.files[file_id] = (name, file_route(data, cuts=cuts, etag=etag, headers=disposition), len(data))
        return file_id

    def _listing(self, h: Handler, q: dict) -> None:
        if q.get("id") not in self.folders:
            h.reply(404, NOT_FOUND_PAGE.encode(), "text/html; charset=utf-8")
            return
        name, children = self.folders[q["id"]]
        links = "".join(
            f'<div class="flip-entry"><a href="https://drive.google.com/'
            f'{"drive/folders/" + cid if folder else "file/d/" + cid + "/view?usp=drive_web"}" target="_blank">'
            f'<div class="flip-entry-title">{html.escape(child)}</div></a></div>'
            for cid, child, folder in children
        )
        page = f'<!DOCTYPE html><html><head><title>{html.escape(name)}</title></head><body><div class="flip-entries">{links}</div></body></html>'
        h.reply(200, page.encode(), "text/html; charset=utf-8")

    def _uc(self, h: Handler, q: dict) -> None:
        where = urllib.parse.urlencode({"id": q.get("id", ""), "export": "download"})
        h.reply(
            303, b"", "text/html; charset=utf-8", {"Location": f"https://drive.usercontent.google.com/download?{where}"}
        )

    def _download(self, h: Handler, q: dict) -> None:
        file_id = q.get("id", "")
        if file_id not in self.files:
            h.reply(404, NOT_FOUND_PAGE.encode(), "text/html; charset=utf-8")
        elif file_id in self.over_quota:
            h.reply(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
        else:
            name, route, size = self.files[file_id]
            uuid = hashlib.sha256(file_id.encode()).hexdigest()[:12]
            if size >= self.scan_above and (q.get("confirm") != "t" or q.get("uuid") != uuid):
                page = SCAN_PAGE.format(id=file_id, name=html.escape(name), size=f"{size // 1000}K", uuid=uuid)
                h.reply(200, page.encode(), "text/html; charset=utf-8")
            else:
                route(h, q)


class _ToLocalServer(requests.adapters.HTTPAdapter):
    """Sends a request for one of Google's hosts to the local server (as `/<host>/<path>`), never through a proxy."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        parts = urllib.parse.urlsplit(request.url)
        local = request.copy()
        local.url = f"{self.base}/{parts.hostname}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        response = super().send(local, stream=stream, timeout=timeout or 5, verify=verify, cert=cert, proxies={})
        response.url, response.request = request.url, request  # redirects and cookies stay Google's
        return response


def route_google_to(server: LocalServer, monkeypatch) -> None:
    """Make every requests session (gdown's) send what it asks of Google's hosts to `server` instead."""
    adapter = _ToLocalServer(server.url(""))
    original = requests.Session.get_adapter

    def get_adapter(session: requests.Session, url: str):
        return adapter if urllib.parse.urlsplit(url).hostname in GOOGLE_HOSTS else original(session, url)

    monkeypatch.setattr(requests.Session, "get_adapter", get_adapter)
