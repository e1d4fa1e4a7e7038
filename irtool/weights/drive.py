"""Google Drive downloads through gdown: a file by its link, or a file inside a shared folder by its path.

gdown, the maintained library for Drive's pages (folder listings, the "can't scan this file for viruses" page, quota
refusals, resuming with a checked byte range), talks to Drive. This module finds the file (listing the folder when
the manifest names a folder and a path), hashes it while it arrives, checks size and sha256, and turns every failure
into one line (`DownloadError`, `ChecksumError`). Never prints.

Beside the destination `<dest>` wait gdown's partial file (`<dest>XXXXXXXX.part`) and `<dest>.drive.json`, which
names the Drive file the partial belongs to and its full size. A partial of another file is deleted rather than
resumed; one of an older upload (Drive announces another size, will not send the rest, or the finished file fails its
sha256) is deleted and the download starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import gdown
import requests
from gdown.download import GoogleDriveFileToDownload

from ..errors import ChecksumError, DownloadError, first_line
from .catalogue import megabytes
from .download import Downloaded, Progress, lock, open_for_download

GOOGLE_HOSTS = frozenset({"drive.google.com", "docs.google.com", "drive.usercontent.google.com"})
RECORD_SUFFIX = ".drive.json"
#: a signed-in Google session exported for gdown (its FAQ: the way past a used-up quota); used when present
GDOWN_COOKIES = Path("~/.cache/gdown/cookies.txt")
_QUOTA = re.compile(r"too many users have viewed or downloaded|quota exceeded", re.IGNORECASE)
_HINTS = {
    403: "not shared with 'Anyone with the link'",
    404: "no such file: moved or removed?",
    429: "too many requests",
}
_NOT_CONTINUED = "did not honor the requested byte range"  # gdown's words when a resume is refused


def is_drive_url(url: str) -> bool:
    return (urllib.parse.urlsplit(url).hostname or "") in GOOGLE_HOSTS


def is_drive_folder(url: str) -> bool:
    """A folder link (`https://drive.google.com/drive/folders/ID`, also with `/u/0/`)."""
    return is_drive_url(url) and re.search(r"/folders/[-\w]+", urllib.parse.urlsplit(url).path) is not None


def download_from_drive(
    url: str,
    dest: str | Path,
    *,
    path: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    retries: int = 2,
) -> Downloaded:
    """Download a Google Drive file to `dest`, resuming a partial download an earlier call left beside it.

    url: a file link (`uc?id=ID`, `/file/d/ID/view`), or a folder link with `path` the file inside it (`MoCE_IR_AIO3/
        last.ckpt`; default: the only file named like `dest`).
    sha256, size: what the file must be (None: unknown); a mismatch deletes the download and raises ChecksumError.
    timeout: seconds to wait for Drive between bytes; retries: further attempts after a lost connection, each
        resuming where the last stopped.
    Raises DownloadError with one line naming the link and the problem (offline, quota used up, not shared, ...).
    """
    dest = Path(dest)
    record = dest.with_name(dest.name + RECORD_SUFFIX)
    cookies = GDOWN_COOKIES.expanduser()
    options: dict[str, Any] = {"timeout": timeout, "use_cookies": cookies.is_file(), "cookies_file": str(cookies)}
    handle = open_for_download(record, "a+")
    try:
        with handle:
            lock(handle, record)
            link = _file_in_folder(url, path or dest.name, dest, options) if is_drive_folder(url) else url
            staging = _Staging(dest, handle, link)
            got = _transfer(staging, progress, retries, options)
            if got.resumed_from and _problem(got, sha256, size):  # the file may have changed on Drive in between
                staging.drop()
                got = _transfer(staging, progress, retries, options)
            problem = _problem(got, sha256, size)
            if problem is None:
                return got
            dest.unlink()
            raise ChecksumError(f"{link}: the downloaded file is not the expected one ({problem}); nothing was kept")
    finally:
        for part in _partials(dest):
            if part.stat().st_size == 0:  # gdown writes in 512 kB chunks: a transfer cut before the first keeps nothing
                part.unlink()
        if not _partials(dest):
            record.unlink(missing_ok=True)


def _problem(got: Downloaded, sha256: str | None, size: int | None) -> str | None:
    if size is not None and got.size != size:
        return f"{got.size} bytes instead of {size}"
    if sha256 is not None and got.sha256 != sha256.lower():
        return f"sha256 {got.sha256} instead of {sha256.lower()}"
    return None


def _transfer(staging: _Staging, progress: Progress | None, retries: int, options: dict[str, Any]) -> Downloaded:
    """gdown's download into `staging.dest`, resumed from the partial file when there is one; started over when that
    partial file cannot be continued (the file changed size on Drive, or the server will not send the rest)."""
    for starting_over in (False, True):
        try:
            return _gdown(staging, progress, retries, options)
        except _StartOver:
            pass
        except Exception as exc:  # gdown scrapes web pages: anything it raises is turned into one line here
            if starting_over or _NOT_CONTINUED not in str(exc):
                raise _one_line(staging.link, staging.dest, exc) from None
        staging.drop()
    raise DownloadError(f"{staging.link}: Google Drive's answers do not add up to one file; try again later")


def _gdown(staging: _Staging, progress: Progress | None, retries: int, options: dict[str, Any]) -> Downloaded:
    dest, kept = staging.dest, staging.kept()
    digest = hashlib.sha256()  # gdown feeds it the resumed bytes too, so the file is never read back

    def report(done: int, total: int | None) -> None:
        if total is not None:
            staging.check_size(total, resuming=kept > 0)
        if progress:
            progress(done, total)

    dest.unlink(missing_ok=True)  # gdown takes a file already there as finished; a staged file is checked anew
    gdown.download(staging.link, str(dest), quiet=True, resume=True, progress=report, hasher=digest, retries=retries,
                   **options)  # fmt: skip
    return Downloaded(dest, digest.hexdigest(), dest.stat().st_size, staging.link, kept)


def _file_in_folder(url: str, path: str, dest: Path, options: dict[str, Any]) -> str:
    """The link of the file at `path` inside the Drive folder `url` (an exact path, else the only one ending so)."""
    try:
        listed: Sequence[Any] = gdown.download_folder(
            url=url, output=str(dest.parent) + os.sep, quiet=True, skip_download=True, **options
        )
    except Exception as exc:
        raise _one_line(url, dest, exc) from None
    files = {f.path.replace(os.sep, "/"): f.id for f in listed if isinstance(f, GoogleDriveFileToDownload)}
    wanted = path.strip("/")
    matches = [p for p in files if p == wanted] or [p for p in files if p.endswith("/" + wanted)]
    if len(matches) == 1:
        return f"https://drive.google.com/uc?id={files[matches[0]]}"
    if matches:
        raise DownloadError(f"{url}: {wanted} is in {len(matches)} places in the folder ({', '.join(matches[:3])})")
    name = wanted.rsplit("/", 1)[-1]
    alike = sorted(p for p in files if p.rsplit("/", 1)[-1] == name)[:4]
    found = f"; files named {name} there: {', '.join(alike)}" if alike else f" ({len(files)} files listed)"
    raise DownloadError(f"{url}: no {wanted} in the Google Drive folder{found}")


# --------------------------------------------------------------------------------------------------------------------
# Partial files


def _partials(dest: Path) -> list[Path]:
    """gdown's partial files for `dest`: its name, 8 random characters, `.part`."""
    pattern = re.compile(re.escape(dest.name) + r".{8}\.part")
    return sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name)) if dest.parent.is_dir() else []


class _StartOver(Exception):
    """The partial file belongs to an older upload of the file (Drive now offers another size): download it anew."""


class _Staging:
    """The partial download of one Drive file beside `dest`, and its record (`<dest>.drive.json`, held open and locked
    by the caller): the file's link and full size, so a partial file is only ever continued with the same file."""

    def __init__(self, dest: Path, handle: IO[str], link: str) -> None:
        self.dest, self.handle, self.link = dest, handle, link
        self.size: int | None = None  #: the file's full size, as Drive announced it when the partial file began
        handle.seek(0)
        try:
            recorded = json.loads(handle.read() or "{}")
        except ValueError:
            recorded = {}
        if not isinstance(recorded, dict) or recorded.get("link") != link or len(_partials(dest)) > 1:
            self.drop()  # another file's partial (or several) never resumes
        else:
            self.size = recorded.get("size")

    def kept(self) -> int:
        return sum(p.stat().st_size for p in _partials(self.dest))

    def drop(self) -> None:
        for part in _partials(self.dest):
            part.unlink(missing_ok=True)
        self._write(None)

    def check_size(self, total: int, *, resuming: bool) -> None:
        """Record the file's full size as Drive announces it; a different size while resuming starts over."""
        if total == self.size:
            return
        if resuming and self.size is not None:
            raise _StartOver
        self._write(total)

    def _write(self, size: int | None) -> None:
        self.size = size
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps({"link": self.link, "size": size}))
        self.handle.flush()


# --------------------------------------------------------------------------------------------------------------------
# One line per failure


def _one_line(link: str, dest: Path, exc: BaseException) -> DownloadError:
    """What went wrong, as one line that names the link and says what to do."""
    causes = _causes(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, gdown.exceptions.FileURLRetrievalError):  # Drive answered with a page instead of the file
        if _QUOTA.search(text):
            return DownloadError(
                f"{link}: Google Drive's download quota for this file is used up (too many downloads in the last "
                "24 hours); run the same command again later, or sign in: export your Google cookies to "
                f"{GDOWN_COOKIES} (gdown's FAQ) and run it again"
            )
        return DownloadError(f"{link}: Google Drive did not hand out the file ({_drive_reason(exc)})")
    if any(isinstance(c, socket.gaierror) or type(c).__name__ == "NameResolutionError" for c in causes):
        host = urllib.parse.urlsplit(link).hostname
        return DownloadError(
            f"{link}: no network ({host} could not be resolved); connect and run the same command again"
        )
    kept = sum(p.stat().st_size for p in _partials(dest))
    after = f"{megabytes(kept)} kept in {_partials(dest)[0]}; run the same command again to resume" if kept else ""
    status = next(
        (c.response.status_code for c in causes if isinstance(c, requests.HTTPError) and c.response is not None), None
    )
    if status is not None:
        return DownloadError(f"{link}: Google Drive answered HTTP {status} ({_HINTS.get(status, 'refused')})")
    if any(isinstance(c, requests.RequestException) for c in causes) or "incomplete" in text.lower():
        innermost = causes[-1]
        if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in str(innermost).lower():
            problem = "could not connect (connection refused)"
        elif any(isinstance(c, (requests.Timeout, TimeoutError)) for c in causes):
            problem = "no answer in time"
        elif "incomplete" in text.lower() or any(
            isinstance(c, requests.exceptions.ChunkedEncodingError) for c in causes
        ):
            problem = "connection lost before the end of the file"
        else:
            problem = f"could not connect ({first_line(innermost)})"
        return DownloadError(f"{link}: {problem}; {after or 'nothing was kept'}")
    if isinstance(exc, gdown.exceptions.DownloadError):
        return DownloadError(f"{link}: {_drive_reason(exc)}{'; ' + after if after else ''}")
    if isinstance(exc, OSError):
        return DownloadError(f"{dest.parent}: cannot write the download there ({first_line(exc, text=exc.strerror)})")
    return DownloadError(
        f"{link}: gdown could not read Google Drive's answer ({first_line(exc, with_type=True)}); Drive may have "
        "changed its pages: `pip install -U gdown`, or download the file in a browser"
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (cause, context, a urllib3 reason, exceptions among its args), outermost first."""
    found: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is f for f in found):
            continue
        found.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return found


def _drive_reason(exc: BaseException) -> str:
    """gdown's explanation without its advice: the indented block of a "Failed to retrieve file url" message, else
    the first sentence."""
    lines = str(exc).splitlines()
    block = [line.strip() for line in lines[1:] if line.startswith("\t")]
    text = " ".join(block[:-1] if len(block) > 1 else block) if lines and lines[0].startswith("Failed") else ""
    text = text or " ".join(str(exc).split())
    return first_line(exc, limit=200, text=text.split(" Check FAQ")[0].rstrip("."))
