"""`irtool weights ...`: the manifest's checkpoints and the user's own (irtool.weights does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import IrtoolError
from . import output
from .options import ConfigFields, JsonFlag, Trust, config_fields


def weights_list(as_json: JsonFlag = False) -> None:
    """List the known checkpoints: status (cached, imported, partial, missing), setting and size."""
    from ..weights import catalogue

    rows = catalogue.statuses()
    if as_json:
        output.echo_json({"cache": str(catalogue.cache_dir()), "models": [r.to_dict() for r in rows]})
        return
    from rich.table import Table

    colours = {"cached": "green", "imported": "green", "built-in": "green", "partial": "yellow", "missing": "dim"}
    table = Table(caption=output.plain(f"cache: {catalogue.cache_dir()}"), caption_justify="left")
    for column in ("name", "official id", "setting", "status", "size"):
        table.add_column(column, no_wrap=column != "status")
    for row in rows:
        status = output.plain(row.status, style=colours[row.status])
        if row.partial_bytes:
            status.append(f" ({catalogue.megabytes(row.partial_bytes)} downloaded, fetch resumes)")
        official = "(local)" if row.local else (row.aliases[0] if row.aliases else "")
        setting = row.setting or f"own {row.variant or row.arch}"
        size = catalogue.megabytes(row.size, row.size_is_approx)
        table.add_row(output.plain(row.name), output.plain(official), output.plain(setting), status, size)
    output.stdout().print(table)


def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="Manifest names or official ids (see `irtool weights list`).")],
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url", help="Download from URL instead of the manifest's; ROLE=URL for an entry with several files."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if the file is cached.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server before giving up.", min=1)] = 30.0,
    retries: Annotated[int, typer.Option(help="Resume this many times after a lost connection.", min=0)] = 2,
    trust_checkpoint: Trust = False,
    as_json: JsonFlag = False,
) -> None:
    """Download checkpoints into the cache, verify them and record their sha256.

    A file in a Google Drive folder is found there by its path (through gdown). An interrupted download resumes where it stopped. Set IRTOOL_WEIGHTS_MIRROR=BASE_URL to download every file from BASE_URL/NAME/FILENAME instead.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from ..weights import catalogue, store

    if url and len(names) > 1:
        output.fail("--url: name one checkpoint to fetch from a URL", code=2)
    console = output.stderr()
    failed = 0
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bars:
        for name in names:
            tasks: dict[str, Any] = {}

            def progress(filename: str, done: int, total: int | None, name: str = name, tasks: dict = tasks) -> None:
                if filename not in tasks:
                    tasks[filename] = bars.add_task(f"{name} {filename}", total=total)
                bars.update(tasks[filename], completed=done, total=total)

            try:
                urls = catalogue.url_overrides(name, url) if url else None
                results += store.fetch(name, urls=urls, force=force, progress=progress, timeout=timeout,
                                         retries=retries, trust=trust_checkpoint)  # fmt: skip
            except IrtoolError as exc:
                output.error(exc, console)
                failed += 1
    if as_json:
        output.echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.already:
                entry = catalogue.find_entry(r.name)
                where = "built into irtool" if entry is not None and entry.built_in else "already in the cache"
                output.line(f"{r.name} ({r.role}): {where}: {r.path}")
                continue
            resumed = f", resumed at {catalogue.megabytes(r.resumed_from)}" if r.resumed_from else ""
            output.line(
                f"{r.name} ({r.role}): {catalogue.megabytes(r.size)} saved to {r.path}{resumed}; sha256 {r.sha256}; "
                f"{r.checked}"
            )
    raise typer.Exit(1 if failed else 0)


def weights_import(
    path: Annotated[
        Path, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors) or a folder holding last.ckpt.")
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Manifest entry it is (checked), or a name of your own; default: from the file name."
        ),
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="Which file of a several-file entry: weights, ir or router.")
    ] = None,
    trust_checkpoint: Trust = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different file already stored under this name.")
    ] = False,
    as_json: JsonFlag = False,
    config: ConfigFields = None,
) -> None:
    """Check a checkpoint and store it in the cache as safetensors, usable as --model NAME.

    The architecture and config are read off the tensors and the file is loaded strictly; with --name of a manifest
    entry it must be that entry's network and variant (and its sha256, where the manifest has one).
    """
    from ..weights import store

    with output.stderr().status(output.plain(f"importing {path}")):
        got = store.import_checkpoint(
            path, name=name, role=role, trust=trust_checkpoint, force=force, config=config_fields(config)
        )
    if as_json:
        output.echo_json(got.to_dict())
        return
    what = f"{got.arch} {got.variant}" if got.variant else got.arch
    verb = "was already imported as" if got.already else "imported as"
    output.line(
        f"{got.source} {verb} {got.name} ({got.role}: {what}, sha256 {got.source_sha256}) -> {got.path}; "
        f"use it as --model {got.name}"
    )


def weights_verify(
    name: Annotated[str | None, typer.Argument(help="Entry to verify; default: everything in the cache.")] = None,
    trust_checkpoint: Trust = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash cached files and load each strictly; exit status 1 if any fails.

    Files are compared with the manifest's sha256 where it has one, else with the one recorded when they were stored.
    """
    from rich.text import Text

    from ..weights import catalogue, store

    with output.stderr().status("verifying"):
        results = store.verify(name, trust=trust_checkpoint)
    bad = [r for r in results if not r.ok]
    if as_json:
        output.echo_json([r.to_dict() for r in results])
    elif not results:
        output.line(f"nothing in the cache to verify ({catalogue.cache_dir()})")
    else:
        for r in results:
            mark = ("ok", "green") if r.ok else ("FAILED", "bold red")
            output.stdout().print(Text.assemble(mark, f" {r.name} ({r.role}) {r.path}: {r.message}"), soft_wrap=True)
    for r in bad:
        output.error(f"{r.name} ({r.role}): {r.message}")
    raise typer.Exit(1 if bad else 0)


def weights_convert(
    path: Annotated[Path, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors) or a folder.")],
    out: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    trust_checkpoint: Trust = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", help="Store floating-point tensors as fp32, fp16 (half the size) or bf16; default: as they are."
        ),
    ] = None,
    as_json: JsonFlag = False,
    config: ConfigFields = None,
) -> None:
    """Write a checkpoint as safetensors, its architecture and config in the metadata (cache untouched)."""
    from ..weights import catalogue, store

    with output.stderr().status(output.plain(f"converting {path}")):
        got = store.convert(path, out, trust=trust_checkpoint, force=force, dtype=dtype, config=config_fields(config))
    if as_json:
        output.echo_json(got.to_dict())
        return
    what = f"{got.arch} {got.variant}" if got.variant else got.arch
    output.line(f"{got.path}: {what}, {catalogue.megabytes(got.size)}, sha256 {got.sha256} (from {got.source})")


def weights_remove(
    name: Annotated[str, typer.Argument(help="Entry whose cached files to delete (a local entry is forgotten).")],
    as_json: JsonFlag = False,
) -> None:
    """Delete an entry's fetched, imported and partly downloaded files from the cache."""
    from ..weights import catalogue, store

    got = store.remove(name)
    if as_json:
        output.echo_json(got.to_dict())
        return
    removed = ", ".join(str(p) for p in got.paths) or "the local entry"
    output.line(f"{got.name}: removed {removed} ({catalogue.megabytes(got.freed)} freed)")


def weights_show(
    name: Annotated[str, typer.Argument(help="Manifest name, official id or local entry.")],
    as_json: JsonFlag = False,
) -> None:
    """Everything about one checkpoint: source, licence, files, the paper's PSNR/SSIM, cache state."""
    from rich.text import Text

    from ..weights import catalogue

    info = catalogue.describe(name)
    if as_json:
        output.echo_json(info)
        return
    out = output.stdout()
    status = info["status"]
    network = f"{info['arch']} {info['variant']}" if info.get("variant") else info["arch"]
    aliases = ", ".join(info.get("aliases", [])) or "local"
    title = Text.assemble((info["name"], "bold"), f" ({aliases}): {network}, {info.get('setting') or 'own import'}; ")
    out.print(title.append(status["status"]), soft_wrap=True)
    if info.get("tasks"):
        output.line(f"tasks: {', '.join(info['tasks'])}", out)
    if info.get("classes"):
        output.line(f"router classes: {', '.join(info['classes'])}", out)
    source = info.get("source") or {}
    for key in ("paper", "repo", "license", "file"):
        if source.get(key):
            output.line(f"{key}: {source[key]}", out)
    for spec in info["files"]:
        output.line(_file_line(spec, status["files"].get(spec["role"], "not in the cache"), info.get("local")), out)
    if info.get("reported"):
        from rich.table import Table

        table = Table(title="reported in the paper")
        for column in ("benchmark", "PSNR", "SSIM"):
            table.add_column(column)
        for bench, score in info["reported"].items():
            table.add_row(output.plain(bench), f"{score['psnr']:.2f}", f"{score['ssim']:.3f}")
        out.print(table)
    if info.get("notes"):
        output.line(f"notes: {info['notes']}", out)


def _file_line(spec: dict[str, Any], here: str, local: bool | None) -> str:
    """One file of a manifest entry: name, size, sha256, where it downloads from and where it is here."""
    from ..weights import catalogue

    if local:
        where = "your import"
    elif spec.get("url"):
        where = spec["url"]
    elif spec.get("drive_folder"):
        where = f"Google Drive folder {spec['drive_folder']}, file {spec.get('drive_path')}"
    else:
        where = "no download link"
    size = catalogue.megabytes(spec.get("size") or spec.get("approx_size"), not spec.get("size"))
    return (
        f"file {spec['role']} ({spec['arch']}): {spec['filename']}, {size}, "
        f"sha256 {spec.get('sha256') or 'unpublished'}; from {where}; local: {here}"
    )
