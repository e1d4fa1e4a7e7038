"""Errors irtool raises for a user's mistake or a bad input file.

Each carries a one-line message that names the thing and the problem (and, where there is one, the fix).
The library raises them and never prints or exits; the CLI turns them into one line on stderr.
Imports nothing.
"""


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
