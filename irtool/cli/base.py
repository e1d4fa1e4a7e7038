"""How every irtool command runs, whatever it does.

- `register` adds a command function to a Typer app. An `IrtoolError` the library raises becomes one error line on
  stderr and exit status 1 (a `UsageError`: 2); irtool's own warnings (an assumed config field) become one line each.
  Ctrl-C becomes one line and exit status 130: the command's own `Interrupted` line where it has one (what was done
  and how to go on), else "interrupted: irtool CMD stopped before it finished".
- `IrtoolCommand` and `IrtoolGroup` are the Typer classes of every command and group. In `--help` a boolean flag
  shows as a flag (`--skip-existing`, `--compile / --no-compile`), never with a `<bool>` value, and help texts are
  shown literally (`[hh:]mm:ss` stays as written). On the command line, a flag followed by a boolean word
  (`--skip-existing true`) is refused with a line that says to leave the word out, instead of the word being taken
  as the next argument (an input path, say).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigGuessWarning, IrtoolError, UsageError
from . import output

#: words a user may put after a flag, meaning to switch it on or off
FLAG_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def _show_flags_as_flags(params: Sequence[Any]) -> None:
    """Typer shows every option's type in --help, flags included (`--overwrite <bool>`); a flag has no value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _escape_help(command: Any) -> None:
    """Typer reads help texts as rich markup, so `[hh:]` would vanish: escape them once, just before showing them."""
    if getattr(command, "_help_escaped", False):
        return
    from rich.markup import escape

    for item in [command, *command.params]:
        if getattr(item, "help", None):
            item.help = escape(item.help)
    command._help_escaped = True


def refuse_flag_values(args: Sequence[str], flags: set[str], negations: dict[str, str]) -> None:
    """Exit with status 2 and one line when a flag in `flags` is followed by a boolean word, e.g.
    `--skip-existing true` (unless a file of that name exists: then it is an argument)."""
    for flag, word in zip(args, args[1:]):
        if flag == "--":
            return
        if flag in flags and word.lower() in FLAG_WORDS and not os.path.lexists(word):
            off = f" ({flag} switches it on, {negations[flag]} off)" if flag in negations else ""
            output.fail(f"{flag} {word}: flags take no value; leave out {word!r}{off}", 2)


def _single_ellipsis(piece: str) -> str:
    """A usage piece with Typer's "..." for a many-valued argument left off when its metavar already says it
    (`{INPUT... OUTPUT_DIR}...` -> `{INPUT... OUTPUT_DIR}`)."""
    head = piece.removesuffix("...")
    return head if head != piece and "..." in head else piece


class IrtoolCommand(TyperCommand):
    """A Typer command with flags shown as flags, literal help texts and `--flag true` refused (see the module
    docstring)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _show_flags_as_flags(params)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _escape_help(self)
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_single_ellipsis(piece) for piece in super().collect_usage_pieces(ctx)]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        flags: set[str] = set()
        negations: dict[str, str] = {}
        for param in self.get_params(ctx):
            if getattr(param, "is_flag", False):
                flags.update(param.opts, param.secondary_opts)
                negations.update(zip(param.opts, param.secondary_opts))
        refuse_flag_values(args, flags, negations)
        return super().parse_args(ctx, args)


class IrtoolGroup(TyperGroup):
    """A Typer group (`irtool`, `irtool weights`) whose --help shows flags as flags and its texts literally."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _show_flags_as_flags(params)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _escape_help(self)
        super().format_help(ctx, formatter)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, caught by a command that can say what was done and how to go on: its one line is the message."""


def _warning_line(
    message: Any,
    category: type,
    filename: str,
    lineno: int,
    file: Any = None,
    line: Any = None,
    *,
    default: Callable = warnings.showwarning,
) -> None:
    """irtool's own warnings (an assumed config field) as one literal line on stderr; others as Python shows them."""
    if issubclass(category, ConfigGuessWarning):
        output.warning(message)
    else:
        default(message, category, filename, lineno, file, line)


def _run_command(fn: Callable, command: str) -> Callable:
    """`fn` with irtool's errors turned into one line and an exit status, and its warnings into one line each;
    Ctrl-C into one line (the command's own `Interrupted` line, else one naming `command`) and exit status 130."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", ConfigGuessWarning)
                warnings.showwarning = _warning_line
                return fn(*args, **kwargs)
        except UsageError as exc:
            output.fail(str(exc), code=2)
        except IrtoolError as exc:
            output.fail(str(exc))
        except KeyboardInterrupt as exc:  # Typer would exit 130 without a word
            said = str(exc) if isinstance(exc, Interrupted) else ""
            output.line(said or f"interrupted: {command} stopped before it finished", output.stderr())
            raise typer.Exit(130) from None

    return run


def register(app: typer.Typer, fn: Callable, name: str | None = None, **kwargs: Any) -> None:
    """Add `fn` to `app` as the command `name` (default: the function's name), run as every irtool command is."""
    words = ["irtool", app.info.name or "", name or fn.__name__.replace("_", "-")]
    command = " ".join(dict.fromkeys(w for w in words if w))  # the root app is named irtool too
    app.command(name, cls=IrtoolCommand, **kwargs)(_run_command(fn, command))
