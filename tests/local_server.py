"""A small HTTP server on 127.0.0.1 for download tests: files with Range support, redirects, errors, cut
connections and a Google-Drive-like confirmation page. It runs in a daemon thread of the test process on a free
port, every socket has a 5 s timeout, and `stop()` shuts it down; nothing ever leaves the machine."""

from __future__ import annotations

import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

        self.routes[path] = route

    def redirect(self, path: str, to: str, code: int = 302) -> None:
        self.routes[path] = lambda h, q: h.reply(code, b"", "text/plain", {"Location": to})

    def status(self, path: str, code: int, body: bytes = b"error") -> None:
        self.routes[path] = lambda h, q: h.reply(code, body, "text/plain")

    def page(self, path: str, html: str, headers: dict | None = None) -> None:
        self.routes[path] = lambda h, q: h.reply(200, html.encode(), "text/html; charset=utf-8", headers)
