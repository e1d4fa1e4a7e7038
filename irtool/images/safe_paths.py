"""Finding and opening input files without being stopped, hung or exhausted by what a folder can hold.

- Special files (FIFOs, character and block devices, sockets) are refused by their type, read with `os.stat` before
  anything opens them: opening a FIFO blocks until a writer comes, `/dev/zero` never ends.
- Symbolic links to files are followed (a link to a photo is a photo); links to folders are not descended by `**` or
  folder walks, and every folder is visited at most once (by device and inode), so no loop is ever followed.
- A broken or looping link, an unreadable folder: one line naming it, and the rest goes on.
- `read_regular` opens non-blocking, checks the type again on the open descriptor (the name may have been swapped
  since the stat) and reads at most the size it was told to allow.

Standard library only.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

#: the longest file name (bytes) that common Linux and macOS file systems hold
NAME_MAX = 255


def real(path: str | Path) -> Path:
    """The canonical path, like Path.resolve() but never raising on a link loop (the loop stays unresolved)."""
    return Path(os.path.realpath(path))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def file_problem(path: str | Path) -> str | None:
    """None when `path` is (or links to) a regular file; else a one-line reason naming it. Opens nothing."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: symbolic link loop; skipped"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"{path}: broken symbolic link (to {target}); skipped"
        if exc.errno == errno.ENOENT:
            return f"{path}: no such file"
        return f"{path}: cannot be read ({exc.strerror or exc})"
    kind = _kind(st.st_mode)
    if kind == "folder":
        return f"{path}: is a folder, not an image"
    if kind is not None:
        return f"{path}: is a {kind}, not an image file; not opened"
    return None


def read_regular(path: str | Path, max_bytes: int | None = None, error: Callable[[str], Exception] = OSError) -> bytes:
    """The bytes of a regular file, refusing special files before opening them and files over `max_bytes`.
    Problems raise `error(one-line message)`."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise error(problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind is not None:  # swapped for a special file between the stat and the open
            raise error(f"{path}: is a {kind}, not an image file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(
                f"{path}: {st.st_size / 1e6:.0f} MB is larger than any image under the megapixel limit (raise it with --max-megapixels)"
            )
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def name_too_long(path: str | Path) -> bool:
    return len(os.fsencode(Path(path).name)) > NAME_MAX


# --------------------------------------------------------------------------------------------------------------------
# Walking folders and globs without following loops


def walk_files(folder: Path, keep: Callable[[str], bool], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """(files below `folder` whose names pass `keep`, sorted; one-line problems met on the way).

    Hidden files and folders are skipped, so is `exclude` (the output folder). Links to folders are not descended
    and no folder is entered twice."""
    found: list[Path] = []
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()

    def onerror(exc: OSError) -> None:
        problems.append(f"{exc.filename}: folder cannot be listed ({exc.strerror or exc}); skipped")

    for root, dirs, files in os.walk(folder, onerror=onerror, followlinks=False):
        try:
            st = os.stat(root)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            dirs[:] = []
            continue
        if ident in seen:  # a bind mount or a hard-linked folder looping back
            dirs[:] = []
            continue
        seen.add(ident)
        root_path = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or real(root_path / d) != exclude)
        )
        found += [root_path / name for name in sorted(files) if not name.startswith(".") and keep(name)]
    return found, problems


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _descend(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    """`folder` and every folder below it (hidden ones skipped), never through a link, each at most once."""
    try:
        st = os.stat(folder)
    except OSError:
        return
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    yield folder
    for entry in _entries(folder):
        if not entry.name.startswith(".") and _is_dir(entry, follow=False):
            yield from _descend(Path(entry.path), seen)


def glob_paths(pattern: str) -> list[Path]:
    """Paths matching a glob pattern (`*`, `?`, `[...]`, and `**` for any depth), like glob.glob(recursive=True)
    but `**` never follows a link to a folder, so a looping tree ends. Sorted; no duplicates."""
    path = Path(pattern)
    parts = path.parts
    if path.is_absolute():
        start, parts = Path(parts[0]), parts[1:]
    else:
        start = Path(".")
    current: list[Path] = [start]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        following: list[Path] = []
        if part == "**":
            for base in current:
                for folder in _descend(base, set()):
                    following.append(folder)
                    if last:
                        following += [
                            Path(e.path)
                            for e in _entries(folder)
                            if not e.name.startswith(".") and not _is_dir(e, True)
                        ]
        elif not _has_magic(part):
            following = [base / part for base in current if os.path.lexists(base / part)]
        else:
            regex = re.compile(fnmatch.translate(part))
            for base in current:
                for entry in _entries(base):
                    if entry.name.startswith(".") and not part.startswith("."):
                        continue
                    if regex.match(entry.name) and (last or _is_dir(entry, True)):
                        following.append(Path(entry.path))
        current = following
    unique: dict[str, Path] = {}
    for p in current:
        shown = Path(os.path.normpath(p)) if start == Path(".") else p
        unique.setdefault(str(shown), shown)
    return sorted(unique.values())
