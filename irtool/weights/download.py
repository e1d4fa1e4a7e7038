"""HTTP downloads of checkpoint files (Hugging Face, a mirror, `--url`): resume, redirects, sha256, atomic finish.

`download(url, dest)` streams into `<dest>.part`, resumes a partial file with a `Range` request (guarded by
`If-Range`, so a file that changed on the server restarts instead of being spliced), checks size and sha256, and only
then renames the file into place. A checksum mismatch deletes what was downloaded; an interrupted transfer keeps the
partial file for the next attempt. A web page in place of the file is refused. Google Drive, whose pages need
scraping, is `irtool.weights.drive` (through gdown). Standard library only (urllib); never prints.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._version import __version__
from ..errors import ChecksumError, DownloadError, first_line
from .catalogue import megabytes

CHUNK_BYTES = 1 << 20
#: progress(bytes_done, bytes_total or None)
Progress = Callable[[int, int | None], None]

_PAGE_BYTES = 64 << 10  # how much of a web page is read to find its title
_RESTARTS = 2  # a range the server answers wrongly starts the transfer over, this many times at most
_RETRY_CODES = {408, 429, 500, 502, 503, 504}
_HINTS = {
    401: "the server wants a login",
    403: "access denied",
    404: "no such file there (moved or removed?)",
    410: "the file was removed",
}


@dataclass(frozen=True)
class Downloaded:
    path: Path  #: the finished file
    sha256: str
    size: int
    url: str  #: where the bytes came from in the end (after redirects; for Google Drive the file's own link)
    resumed_from: int  #: bytes reused from an earlier, interrupted attempt


class _Transient(Exception):
    """A failure worth retrying (connection lost, timeout, 5xx); the partial file stays."""


def sha256_file(path: str | Path, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff_s: float = 1.0,
) -> Downloaded:
    """Download `url` to `dest`, resuming `<dest>.part` if an earlier attempt left one.

    sha256, size: what the file must be (None: unknown); a mismatch deletes the download and raises ChecksumError.
    retries: further attempts after a lost connection, a timeout or a 5xx answer, each resuming where the last
        stopped (waiting backoff_s, then twice that, ...).
    Raises DownloadError with one line naming the URL and the problem.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    problem: str | None = None  # the last transient failure, then what is wrong with the finished file
    with open_for_download(part, "ab") as handle:
        lock(handle, part)
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                final_url, resumed_from, digest = _transfer(url, handle, part, size, progress, timeout)
                break
            except _Transient as exc:
                problem = str(exc)
            except ChecksumError:
                _truncate(handle)
                _forget_empty(handle, part)
                raise
            except DownloadError:
                _forget_empty(handle, part)
                raise
        else:
            kept = _size_of(handle)
            if kept:
                where = f"{megabytes(kept)} kept in {part}; run the same command again to resume"
            else:
                where = "nothing was kept"
            tries = f" (tried {retries + 1} times)" if retries else ""
            _forget_empty(handle, part)
            raise DownloadError(f"{problem}{tries}; {where}")
        got = _size_of(handle)
        problem = None
    if size is not None and got != size:
        problem = f"{got} bytes instead of {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest} instead of {sha256.lower()}"
    if problem:
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)
        raise ChecksumError(f"{url}: the downloaded file is not the expected one ({problem}); nothing was kept")
    os.replace(part, dest)
    _sidecar(part).unlink(missing_ok=True)
    return Downloaded(dest, digest, got, final_url, resumed_from)


# --------------------------------------------------------------------------------------------------------------------
# One attempt


def _transfer(
    url: str, handle: IO[bytes], part: Path, size: int | None, progress: Progress | None, timeout: float
) -> tuple[str, int, str]:
    """Append the rest of the file to `handle`; returns (final url, bytes resumed from, sha256 of the whole file)."""
    have = _size_of(handle)
    validator = _resume_validator(part, url)
    if have and validator is None:
        _truncate(handle)  # a partial file from another URL (or from an irtool without the record) is not resumed
        have = 0
    for _ in range(_RESTARTS + 1):
        headers = {"User-Agent": f"irtool/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and have:  # nothing left to send: the partial file may already be whole
                total = _content_range(exc.headers.get("Content-Range", ""))[2]
                if total == have:
                    return exc.url or url, have, _hash_prefix(part, have).hexdigest()
                _truncate(handle)
                have = 0
                continue
            raise _http_error(exc) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"{url}: could not connect ({_reason(exc)})") from None
        with response:
            if _is_web_page(response):
                raise DownloadError(_page_problem(response.read(_PAGE_BYTES), response.geturl()))
            start, total = _offered_range(response)
            if start != have:  # the server sent the whole file (200), or a range we did not ask for
                _truncate(handle)
                have = 0
                if start != 0:
                    continue
            if size is not None and total is not None and total != size:
                raise ChecksumError(
                    f"{response.geturl()}: the server offers {total} bytes, the manifest says {size}; nothing was downloaded"
                )
            _check_space(part, (total or 0) - have)
            _sidecar(part).write_text(json.dumps({"url": url, "validator": _validator_of(response)}))
            digest = _hash_prefix(part, have)
            done = have
            if progress:
                progress(done, total)
            try:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            except (http.client.HTTPException, OSError) as exc:
                handle.flush()
                raise _Transient(f"{url}: connection lost after {_fraction(done, total)} ({_reason(exc)})") from None
            handle.flush()
            if total is not None and done < total:
                raise _Transient(f"{url}: connection closed after {_fraction(done, total)}")
            return response.geturl(), have, digest.hexdigest()
    raise DownloadError(f"{url}: the server keeps answering with a byte range other than the one asked for")


def _offered_range(response: http.client.HTTPResponse) -> tuple[int, int | None]:
    """(first byte, total size or None) of what the response carries."""
    if response.status == 206:
        start, _, total = _content_range(response.headers.get("Content-Range", ""))
        if start is None:
            raise DownloadError(f"{response.geturl()}: partial answer without a valid Content-Range header")
        return start, total
    length = response.headers.get("Content-Length", "")
    return 0, int(length) if length.isdigit() else None


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 199, 1000); `bytes */1000` -> (None, None, 1000)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    first, last, total = match.groups()
    as_int = lambda s: int(s) if s and s != "*" else None  # noqa: E731
    return as_int(first), as_int(last), as_int(total)


def _validator_of(response: http.client.HTTPResponse) -> str | None:
    """What If-Range can quote to resume only an unchanged file: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _sidecar(part: Path) -> Path:
    """Beside a partial file: the URL it came from and its validator, so a resume never splices two files."""
    return part.with_name(part.name + ".json")


def _resume_validator(part: Path, url: str) -> str | None:
    """The validator to resume `part` with ("" when the server gave none); None when `part` must start over."""
    try:
        record = json.loads(_sidecar(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("url") != url:
        return None
    return record.get("validator") or ""


def _hash_prefix(path: Path, n: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0 and (chunk := f.read(min(CHUNK_BYTES, n))):
            digest.update(chunk)
            n -= len(chunk)
    return digest


def _size_of(handle: IO[bytes]) -> int:
    handle.flush()
    return os.fstat(handle.fileno()).st_size


def _truncate(handle: IO[bytes]) -> None:
    handle.flush()
    handle.truncate(0)
    handle.seek(0)


def _forget_empty(handle: IO[bytes], part: Path) -> None:
    if _size_of(handle) == 0:
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)


def open_for_download(path: Path, mode: str) -> IO[Any]:
    """Open a file beside a download (its folder made first); one line naming the folder when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode)
    except OSError as exc:
        raise DownloadError(
            f"{path.parent}: cannot write the download there ({first_line(exc, text=exc.strerror)})"
        ) from None


def lock(handle: IO[Any], part: Path) -> None:
    """Refuse to write a partial download that another process is writing (POSIX; elsewhere no lock is taken)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise DownloadError(f"{part}: another irtool process is downloading this file; wait for it to finish") from None


def _check_space(part: Path, needed: int) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(
            f"{part.parent}: the download needs {megabytes(needed)} but only {megabytes(free)} are free"
        )


def _fraction(done: int, total: int | None) -> str:
    return f"{megabytes(done)} of {megabytes(total)}" if total else megabytes(done)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip() or type(reason).__name__
    if isinstance(reason, TimeoutError) or "timed out" in text:
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return "host name not resolved; offline?"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return first_line(exc, text=text)


def _http_error(exc: urllib.error.HTTPError) -> Exception:
    phrase = exc.reason or http.client.responses.get(exc.code, "")
    message = f"{exc.url}: HTTP {exc.code} {phrase}".rstrip()
    if exc.code in _RETRY_CODES:
        return _Transient(message)
    hint = _HINTS.get(exc.code)
    return DownloadError(f"{message}: {hint}" if hint else message)


# --------------------------------------------------------------------------------------------------------------------
# A web page in place of the file (a login, an error, a page that needs a browser)


def _is_web_page(response: http.client.HTTPResponse) -> bool:
    kind = response.headers.get_content_type()
    attachment = "attachment" in response.headers.get("Content-Disposition", "").lower()
    return kind in ("text/html", "application/xhtml+xml") and not attachment


def _page_problem(page: bytes, page_url: str) -> str:
    match = re.search(rb"<title[^>]*>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    title = " ".join(html.unescape(match.group(1).decode("utf-8", "replace")).split())[:80] if match else ""
    return f"{page_url}: the server sent a web page ({title or 'untitled'!r}), not the file; open the URL in a browser to see why"
