"""Errors irtool raises for a user's mistake or a bad input file.

Each carries a one-line message that names the thing and the problem (and, where there is one, the fix).
The library raises them and never prints or exits; the CLI turns them into one line on stderr.
Imports the standard library's re only.
"""

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(exc: BaseException, limit: int | None = 160, *, with_type: bool = False, text: str | None = None) -> str:
    """An exception as a fragment of a one-line message: the first line of its text (terminal colour codes removed,
    cut at `limit` characters), or its type's name when it has no text. with_type: "TypeError: text".
    text: use this instead of str(exc) (e.g. an OSError's strerror)."""
    lines = _ANSI.sub("", str(exc) if text is None else text).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = lines[0] if limit is None else lines[0][:limit]
    return f"{type(exc).__name__}: {line}" if with_type else line


class ConfigGuessWarning(UserWarning):
    """A config field the weights cannot show (such as top_k) was assumed rather than read; state it to be sure."""


class IrtoolError(Exception):
    """Base class: a problem with an input, a file or an option, never a bug in irtool."""


class CheckpointError(IrtoolError):
    """A checkpoint cannot be read, is not a supported network, or does not match its network."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary pickled objects to load; refused unless the caller trusts it."""


class WeightsNotFoundError(IrtoolError):
    """A named checkpoint is not in the manifest or not downloaded yet."""


class ImageError(IrtoolError):
    """An image cannot be read or written."""


class DownloadError(IrtoolError):
    """A download failed: offline, refused by the server, interrupted, or not the file that was asked for."""


class ChecksumError(IrtoolError):
    """A file's sha256 (or size) is not the one the manifest or the cache's record says it must be."""


class UsageError(IrtoolError):
    """The command line itself is wrong (a missing argument, a value given to a flag): exit status 2."""
