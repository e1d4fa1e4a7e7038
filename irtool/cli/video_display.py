"""How `irtool restore` shows videos on a terminal: a progress bar in frames per video (fps, ETA) and the table
of a restored video's shots. Rich only; what is shown comes from irtool.restoration.video."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..restoration.video.restore import Progress as FrameProgress
    from ..restoration.video.restore import VideoReport


class FrameBars:
    """A transient bar per video, in frames: what (analysing/restoring NAME), bar, done/total, fps, elapsed, ETA.
    `bar` is what `irtool.restoration.video.restore.restore_videos` takes as its progress."""

    def __init__(self, console: Console, disable: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("{task.fields[what]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        self.progress = Progress(*columns, console=console, transient=True, disable=disable)

    @contextlib.contextmanager
    def bar(self, src: Path) -> Iterator[FrameProgress]:
        task = self.progress.add_task("video", total=None, what=f"analysing {src.name}", rate="")
        started = time.perf_counter()

        def show(phase: str, done: int, total: int | None) -> None:
            nonlocal started
            if phase == "restore" and done == 0:
                started = time.perf_counter()  # fps counts the restoring pass only
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:.2f} fps" if elapsed > 0 and done else ""
            what = f"{'restoring' if phase == 'restore' else 'analysing'} {src.name}"
            self.progress.update(task, completed=done, total=total, what=what, rate=rate)

        try:
            yield show
        finally:
            self.progress.remove_task(task)


def shots_table(report: VideoReport) -> Table:
    """Per shot: frame range, time range, degradation, experts (and, routed per frame, how many routings ran)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(
            f"{report.input}: {report.frames} frames, {len(report.shots)} shot(s), routing per {'frame' if report.routing == 'per-frame' else 'shot'}"
        ),
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        box=None,
        header_style="bold",
    )
    for column in ("shot", "frames", "time", "degradation", "experts", "routings"):
        table.add_column(column, justify="right" if column in ("shot", "routings") else "left", no_wrap=True)
    for n, shot in enumerate(report.shots):
        name = shot.degradation or "-"
        if shot.confidence is not None:
            name += f" {shot.confidence:.0%}"
        experts = (
            "-"
            if not shot.experts
            else (
                " ".join("+".join(map(str, layer)) for layer in shot.experts)
                if any(len(l) > 1 for l in shot.experts)
                else "".join(str(l[0]) for l in shot.experts)
            )
        )
        table.add_row(
            str(n + 1),
            f"{shot.start}-{shot.end - 1}",
            f"{shot.start_time:.2f}-{shot.end_time:.2f}s",
            name,
            experts,
            str(shot.routings),
        )
    return table
