"""What every command prints: one-line errors, warnings and notes on stderr, JSON on stdout, and the consoles.

User-controlled text (file names, error messages, manifest names) is always printed literally: a name such as
`[red]x:smile:.png` must show as itself, never as rich markup or an emoji code. So messages go out as rich `Text`
objects (styled prefix, literal message) and plain lines with markup off, never as markup strings with the text
pasted in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import typer

from .. import finite_json

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def stderr() -> Console:
    """A console on stderr. Made per call, so that it writes to the stderr of the moment (tests swap it)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, emoji=False)


def stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False, emoji=False)


def wide_stdout() -> Console:
    """stdout for wide tables: when piped or redirected, 140 columns instead of squeezing into 80."""
    console = stdout()
    if not console.is_terminal:
        from rich.console import Console

        console = Console(highlight=False, emoji=False, width=140)
    return console


def plain(text: Any, style: str = "") -> Text:
    """`text` as a rich Text shown literally (a table cell, a title): no markup, no emoji codes."""
    from rich.text import Text

    return Text(str(text), style=style)


def _prefixed(prefix: str, style: str, message: Any) -> Text:
    from rich.text import Text

    return Text.assemble((prefix, style), " ", str(message))


def error(message: Any, console: Console | None = None) -> None:
    """`error: MESSAGE` as one line on stderr (or on `console`, e.g. a progress display's), printed literally."""
    (console or stderr()).print(_prefixed("error:", "bold red", message), soft_wrap=True)


def warning(message: Any, console: Console | None = None) -> None:
    """`warning: MESSAGE`, one literal line on stderr."""
    (console or stderr()).print(_prefixed("warning:", "yellow", message), soft_wrap=True)


def note(message: Any, console: Console | None = None) -> None:
    """`note: MESSAGE`, one literal line on stderr."""
    (console or stderr()).print(_prefixed("note:", "yellow", message), soft_wrap=True)


def line(text: Any, console: Console | None = None) -> None:
    """One literal line on stdout, or on `console` (no markup, no emoji codes, never wrapped)."""
    if console is None:
        typer.echo(str(text))
    else:
        console.print(plain(text), soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One error line on stderr, then exit with `code` (1: an input could not be processed; 2: bad usage)."""
    error(message)
    raise typer.Exit(code)


def echo_json(obj: Any) -> None:
    """`obj` as one line of JSON on stdout (non-finite numbers as null, so every parser reads it)."""
    typer.echo(finite_json.dumps(obj))
