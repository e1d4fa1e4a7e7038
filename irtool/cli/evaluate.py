"""`irtool eval`: a model (or several, in turn) scored on benchmark datasets with the published protocols, next to
the paper's figures; reports as tables, JSON, CSV, usage plots and an HTML page."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from . import output
from .options import (
    ConfigFields,
    DataRoot,
    Device,
    RouterConfigFields,
    Trust,
    config_fields,
    gpu_list_option,
    gpu_numbers,
    json_flag,
)

_PROTOCOL_NAMES = ("moce", "promptir", "y", "lorair")


def eval_command(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Benchmark (repeatable): rain100l, cbsd68-25, cbsd68 (=15,25,50), cdd11, "
            "synthetic:noise25, ... See `irtool datasets list`.",
        ),
    ] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--setting", help="A paper's benchmark set: aio3, aio5, cdd11, allweather.")
    ] = None,
    model_name: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name from the manifest (in the cache); repeat to compare models."),
    ] = None,
    weights: Annotated[
        list[str] | None, typer.Option("--weights", "-w", help="Checkpoint file or folder; repeat to compare models.")
    ] = None,
    router: Annotated[
        Path | None,
        typer.Option(
            "--router", help="LoRA-IR: the router checkpoint, when --weights is the restoration network alone."
        ),
    ] = None,
    config: ConfigFields = None,
    router_config: RouterConfigFields = None,
    reported: Annotated[
        str | None, typer.Option("--reported", help="Compare with this manifest entry's published figures.")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol", help=f"Metric protocol ({', '.join(_PROTOCOL_NAMES)}); default: each dataset's own."
        ),
    ] = None,
    crop_border: Annotated[
        int, typer.Option("--crop-border", min=0, help="Border (px) dropped before Y-protocol metrics.")
    ] = 0,
    data_root: DataRoot = None,
    clean_dir: Annotated[Path | None, typer.Option("--clean-dir", help="Clean photos for synthetic: datasets.")] = None,
    device: Device = "auto",
    gpu: Annotated[
        str | None,
        gpu_list_option(
            "N: same as --device cuda:N. 0,1,3 or all: one worker process per GPU, each scoring a share of every dataset (with --device cpu: that many CPU processes)."
        ),
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32 (the papers'), bf16 or fp16 autocast.")] = "fp32",
    tile: Annotated[
        int,
        typer.Option(
            "--tile", min=0, help="Tile size in px for large images (departs from the protocol); 0 = whole image."
        ),
    ] = 0,
    routing_noise: Annotated[
        bool,
        typer.Option("--routing-noise", help="MoCE-IR: add the official test's router-logit noise (torch seed 0)."),
    ] = False,
    noise_stream: Annotated[
        str,
        typer.Option(
            "--noise-stream",
            help="shared: one seed-0 noise stream for all noise sets, in order (the "
            "official 15->25->50 run); fresh: reseed for each (as if run alone).",
        ),
    ] = "shared",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N images of each dataset (quick look).")
    ] = None,
    save_images: Annotated[
        Path | None, typer.Option("--save-images", help="Write restored images to DIR/<dataset>/ (see --save-format).")
    ] = None,
    save_format: Annotated[
        str,
        typer.Option(
            "--save-format",
            help="png8: 8-bit PNG (to look at); png16: 16-bit PNG; tiff: float32 TIFF, the exact output the scores were computed on.",
        ),
    ] = "png8",
    save_inputs: Annotated[
        Path | None,
        typer.Option("--save-inputs", help="Write the inputs as fed (e.g. the noisy images) to DIR/<dataset>/."),
    ] = None,
    as_json: Annotated[
        bool, json_flag("Print the full report (per image) as JSON on stdout instead of tables.")
    ] = False,
    json_file: Annotated[
        str | None, typer.Option("--json-file", help="Write the full report (per image) as JSON to FILE.")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write per-image scores as CSV to FILE.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of expert usage per layer (needs matplotlib).")
    ] = None,
    trust_checkpoint: Trust = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    report_html: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write a self-contained HTML report (scores beside the paper's, per-image table, worst/best images, crops side by side) to FILE (needs irtool[report]).",
        ),
    ] = None,
    figure: Annotated[
        list[str] | None,
        typer.Option(
            "--figure",
            help="With --report: save the crop NAME:x,y,w,h (NAME: file or DATASET/FILE) from every model side by side as a PNG beside the report.",
        ),
    ] = None,
) -> None:
    """Score a model on benchmark datasets with the published protocols, next to the paper's figures.

    With several --model/--weights, each is scored in turn; --json and --json-file then hold a list of reports, --csv gains a model column, --save-images writes DIR/<model>/<dataset>/.
    """
    from ..evaluation import datasets as ds
    from ..evaluation import evaluate
    from ..weights import catalogue

    if not dataset and not setting:
        output.fail("name a benchmark with --dataset NAME or --setting aio3 (see `irtool datasets list`)", 2)
    if figure and not report_html:
        output.fail("--figure needs --report FILE (the figure is saved beside the report)", 2)
    if protocol is not None and protocol not in _PROTOCOL_NAMES:
        output.fail(f"--protocol {protocol}: one of {', '.join(_PROTOCOL_NAMES)}", 2)
    if json_file == "-":
        output.fail("--json-file -: use --json to print the report on stdout", 2)
    sources: list[tuple[str | None, bool]] = [(m, True) for m in model_name or []]
    sources += [(w, False) for w in weights or []]
    names = ds.expand(dataset or [], setting or [])
    figures = _figures(report_html, figure)
    device, ranked, targets = _targets(names, gpu_numbers(gpu), device, len(sources) > 1, data_root, clean_dir,
                                       limit, routing_noise)  # fmt: skip
    if reported and catalogue.find_entry(reported) is None:
        output.fail(f"--reported {reported}: not a manifest entry (see weights_manifest.json)")
    options = evaluate.EvalOptions(protocol=protocol, crop_border=crop_border, precision=precision, tile=tile,
                                   routing_noise=routing_noise, noise_stream=noise_stream, limit=limit,
                                   save_images=save_images, save_format=save_format, save_inputs=save_inputs)  # fmt: skip
    run = _EvalRun(
        sources=sources, targets=targets, options=options, device=device, router=router, trust=trust_checkpoint,
        config=config_fields(config), router_config=config_fields(router_config, "--router-config"),
        reported=reported, ranked=ranked, json_file=json_file, json_stdout=as_json, csv_path=csv_path,
        report_html=report_html, figures=figures, quiet=quiet or as_json,
    )  # fmt: skip
    interrupted = run.score_all()
    raise typer.Exit(run.finish(interrupted, plot))


def _figures(report_html: Path | None, figure: list[str] | None) -> list[Any]:
    """The --figure crops, checked before any work (with --report, whose Jinja2 is checked too)."""
    if not report_html:
        return []
    from ..report import check_available
    from ..report.evaluation import parse_figure

    check_available()
    return [parse_figure(text) for text in figure or []]


def _targets(
    names: list[str],
    gpus: list[int] | None,
    device: str,
    several: bool,
    data_root: Path | None,
    clean_dir: Path | None,
    limit: int | None,
    routing_noise: bool,
) -> tuple[str, Any, list[Any]]:
    """(device, ranked run or None, the datasets found): every dataset is found before a model loads. With a GPU
    list this command line is started once per GPU instead (and this process exits with their status)."""
    from ..evaluation import evaluate
    from ..shard import world_size

    if several and (world_size() > 1 or (gpus and len(gpus) > 1)):
        output.fail(
            "several models are compared in one process: drop the GPU list (or merge report JSONs with `irtool report`)",
            2,
        )
    if gpus and len(gpus) > 1 and world_size() == 1:
        from ..distributed_run import launch

        raise typer.Exit(launch("eval", gpus, device, ("--device", "-d")))
    if gpus and device != "cpu":
        device = f"cuda:{gpus[0]}"
    if world_size() == 1:
        return device, None, evaluate.resolve(names, data_root, clean_dir)
    from ..distributed_run import RankedEval  # under torchrun: this rank scores a share of every dataset

    ranked = RankedEval.start(names, data_root, clean_dir, device, limit, routing_noise)
    return ranked.device, ranked, ranked.targets


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label)


@dataclass
class _EvalRun:
    """One `irtool eval`: the models scored in turn on the datasets, and where their reports go."""

    sources: list[tuple[str | None, bool]]  #: (name or path, whether it is a manifest name); none: the default model
    targets: list[Any]
    options: Any  #: evaluate.EvalOptions
    device: str
    router: Path | str | None
    trust: bool
    config: dict[str, Any] | None
    router_config: dict[str, Any] | None
    reported: str | None
    ranked: Any  #: the multi-process run under torchrun, else None
    json_file: str | None
    json_stdout: bool
    csv_path: Path | None
    report_html: Path | None
    figures: list[Any]
    quiet: bool
    reports: list[Any] = field(default_factory=list)
    galleries: list[Any] = field(default_factory=list)

    @property
    def several(self) -> bool:
        return len(self.sources) > 1

    @functools.cached_property
    def labels(self) -> list[str]:
        """One name per model, for --csv's column and --save-images' folders: file names, made unique."""
        labels: list[str] = []
        for name, _ in self.sources:
            base = Path(name).name or name if name else "default"
            labels.append(base if base not in labels else f"{base}-{len(labels) + 1}")
        return labels or ["default"]

    def score_all(self) -> bool:
        """Score every model in turn; True if Ctrl-C stopped it (the reports then hold the images done)."""
        wanted: dict[Any, Any] = {}
        for n, ((name, is_model), label) in enumerate(zip(self.sources or [(None, False)], self.labels)):
            gallery, interrupted = self._score(name, is_model, label, wanted)
            if interrupted:
                return True
            if gallery is not None and n == 0:
                wanted = gallery.selection()  # the images every later model shows beside this one
        return False

    def _source(self, name: str | None, is_model: bool) -> tuple[Any, str | Path, Path | str | None]:
        """(manifest entry with the paper's figures or None, what to load, its router); no name: the default
        model, as `irtool restore` picks it."""
        from ..weights import catalogue

        entry_name = self.reported or (name if is_model else None)
        entry = catalogue.find_entry(entry_name) if entry_name else None
        if name is not None:
            return entry, name, self.router
        from ..loading import default_source

        source, default_router, how = default_source()
        if self.ranked is None or self.ranked.is_main:
            output.note(f"using {how}")
        default_name = catalogue.load_manifest().get("default")
        if entry is None and isinstance(default_name, str) and default_name:
            entry = catalogue.find_entry(default_name)
        return entry, source, self.router or default_router

    def _score(self, name: str | None, is_model: bool, label: str, wanted: dict[Any, Any]) -> tuple[Any, bool]:
        """Score one model: (its gallery for the HTML report or None, whether Ctrl-C stopped it)."""
        from ..evaluation import evaluate
        from ..loading import load_model

        entry, source, router = self._source(name, is_model)
        save_images = self.options.save_images
        options = replace(
            self.options, save_images=save_images / _slug(label) if save_images and self.several else save_images
        )

        def load() -> Any:
            return load_model(source, device=self.device, router=router, trust=self.trust, config=self.config,
                              router_config=self.router_config)  # fmt: skip

        def new_report(model: Any) -> Any:
            return evaluate.new_report(
                model, options, source=str(source), device=next(model.parameters()).device,
                reported_from=entry.name if entry else None,
                reported=evaluate.reported_figures(entry.data if entry else None),
            )  # fmt: skip

        if self.ranked is not None and not self.ranked.is_main:
            try:
                raise typer.Exit(self.ranked.work(load, options, new_report))
            finally:
                self.ranked.close()
        model = load()
        report = new_report(model)
        self.reports.append(report)
        # the HTML report keeps a few images as they pass (a multi-process run shows scores without pictures)
        gallery = None
        if self.report_html and self.ranked is None:
            from ..report.evaluation import Gallery

            gallery = Gallery(wanted=dict(wanted), figures=self.figures)
        self.galleries.append(gallery)
        if self.ranked is not None:
            run = self.ranked.run
        else:
            run = functools.partial(evaluate.run, targets=self.targets, observer=gallery)
        try:
            _run_with_progress(run, self.targets, model, options, report, quiet=self.quiet)
        except KeyboardInterrupt:
            return gallery, True
        finally:
            self._write_files(report)  # finished images are never lost: written even after Ctrl-C (marked incomplete)
        return gallery, False

    def _write_files(self, report: Any) -> None:
        from ..evaluation import evaluate

        if self.several:
            evaluate.write_many(self.reports, self.labels[: len(self.reports)], self.json_file, self.csv_path)
            return
        if self.json_file:
            evaluate.write_json(report, self.json_file)
        if self.csv_path:
            evaluate.write_csv(report, self.csv_path)

    def finish(self, interrupted: bool, plot: Path | None) -> int:
        """The HTML report, plots, tables or JSON, and failed images as error lines; returns the exit status."""
        from ..evaluation import evaluate

        if self.ranked is not None:
            self.ranked.close()
        if self.report_html:
            from ..report.evaluation import write_report

            page, pngs = write_report(self.report_html, [r.to_dict() for r in self.reports], self.galleries)
            for path in [page, *pngs]:
                output.line(f"{'report' if path == page else 'figure'}: {path}", output.stderr())
        if interrupted:
            output.line("interrupted; the report holds the images finished so far", output.stderr())
            return 130
        if plot:
            for report, label in zip(self.reports, self.labels):
                evaluate.plot_usage(
                    report, plot.with_name(f"{plot.stem}.{_slug(label)}{plot.suffix}") if self.several else plot
                )
        if self.json_stdout:
            typer.echo(evaluate.to_json_many(self.reports) if self.several else evaluate.to_json(self.reports[0]))
        else:
            for report in self.reports:
                _render(report)
        failures = [r.error for report in self.reports for d in report.datasets for r in d.images if r.error]
        for message in failures[:20]:
            output.error(message)
        if len(failures) > 20:
            output.line(f"... and {len(failures) - 20} more failed images (see --json-file/--csv)", output.stderr())
        return self.ranked.exit_code(bool(failures)) if self.ranked is not None else 1 if failures else 0


def _run_with_progress(run: Any, targets: list, model: Any, options: Any, report: Any, *, quiet: bool) -> None:
    """`run(model, options=, report=)` yields (dataset progress, image result) per image: evaluate.run, or a
    multi-process run's rank 0."""
    if quiet:
        for _ in run(model, options=options, report=report):
            pass
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[score]}"))  # fmt: skip
    with Progress(*columns, console=output.stderr(), transient=False) as progress:
        tasks: dict[str, Any] = {}
        for located in targets:
            n = len(located.pairs) + (0 if options.limit else len(located.probe.unpaired_inputs))
            tasks[located.spec.name] = progress.add_task(located.spec.name, total=min(n, options.limit or n), score="")
        for dreport, _ in run(model, options=options, report=report):
            psnr = dreport.psnr
            progress.update(tasks[dreport.dataset], advance=1, score=f"{psnr:.2f} dB" if psnr is not None else "")


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    if value == float("inf"):
        return "inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_pair(psnr: float | None, ssim: float | None) -> str:
    """ "PSNR/SSIM" of the degraded inputs (the baseline column of eval tables)."""
    return "–" if psnr is None or ssim is None else f"{_fmt(psnr, 2)}/{_fmt(ssim, 3)}"


def _render(report: Any) -> None:
    """One model's scores per dataset beside the paper's, its router usage, and the notes on how they were made."""
    from rich.table import Table

    console = output.wide_stdout()
    model = report.model
    title = f"{Path(model['source']).name} ({model['arch']}, {model['parameters'] / 1e6:.2f}M params) on {report.device}, {report.precision}"
    table = Table(title=output.plain(title), title_justify="left")
    for column in ("dataset", "protocol", "images", "input", "PSNR", "SSIM", "paper", "ΔPSNR", "ΔSSIM", "s/img"):
        table.add_column(column, justify="left" if column in ("dataset", "protocol") else "right", no_wrap=True)
    table.add_column("worst image", overflow="ellipsis", no_wrap=True)
    for d in report.datasets:
        s = d.summary()
        paper = f"{d.reported['psnr']:.2f}/{d.reported['ssim']:.3f}" if d.reported else "–"
        worst = d.worst
        images = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        delta = s["delta_psnr"]
        delta_text = output.plain(
            _fmt(delta, 2, signed=True), "" if delta is None else "green" if delta >= -0.005 else "red"
        )
        table.add_row(
            output.plain(d.dataset), d.protocol, images, _fmt_pair(s["input_psnr"], s["input_ssim"]), _fmt(s["psnr"], 2),
            _fmt(s["ssim"], 4), paper, delta_text,
            _fmt(s["delta_ssim"], 4, signed=True), _fmt(s["seconds_per_image"], 3),
            output.plain(f"{worst.file} {worst.psnr:.2f}") if worst else "–",
        )  # fmt: skip
    avg = report.average
    if avg:
        ref = avg.get("reported")
        table.add_section()
        table.add_row(
            "average", "", str(len(avg["datasets"])) + " sets", _fmt_pair(avg.get("input_psnr"), avg.get("input_ssim")),
            _fmt(avg["psnr"], 2), _fmt(avg["ssim"], 4),
            f"{ref['psnr']:.2f}/{ref['ssim']:.3f}" if ref else "–", _fmt(avg.get("delta_psnr"), 2, signed=True),
            _fmt(avg.get("delta_ssim"), 4, signed=True), "", "",
        )  # fmt: skip
    console.print(table)
    _render_usage(console, report)
    from rich.text import Text

    for note in _notes(report):
        console.print(Text.assemble(("·", "dim"), " ", note), soft_wrap=True)


def _notes(report: Any) -> list[str]:
    """How the scores were made: the protocols, the test noise, synthetic sets, departures and warnings."""
    notes = []
    if report.reported_from:
        notes.append(f"paper figures: manifest entry {report.reported_from}")
    seen_protocols: set[str] = set()
    for d in report.datasets:
        if d.protocol not in seen_protocols:
            seen_protocols.add(d.protocol)
            notes.append(f"protocol {d.protocol}: {d.reproduces}")
        if d.noise:
            follows = ", ".join(d.noise["follows"]) or "nothing (as if run alone)"
            notes.append(f"{d.dataset}: AWGN σ{d.noise['sigma']}, seed 0 {d.noise['stream']} stream, after {follows}")
        if d.synthetic:
            notes.append(f"{d.dataset}: {d.synthetic['photos']} ({d.synthetic['kind']} {d.synthetic['level']:g}, "
                         "seeded per image); no published figure")  # fmt: skip
        notes.extend(f"{d.dataset}: departs from the protocol: {x}" for x in d.departures)
        notes.extend(f"{d.dataset}: {w}" for w in d.warnings)
    if report.options.get("routing_noise"):
        notes.append("router-logit noise on (official MoCE-IR test behaviour, torch seed 0)")
    if report.saved_images:
        notes.append(f"restored images in {report.saved_images['folder']} as {report.saved_images['keeps']}")
    return notes


def _render_usage(console: Any, report: Any) -> None:
    """The router's choices: the most chosen expert per MoCE layer, or LoRA-IR's class per image."""
    from rich.table import Table

    expert_sets = [d for d in report.datasets if d.usage and d.usage["kind"] == "experts"]
    if expert_sets:
        layers = len(expert_sets[0].usage["counts"])
        table = Table(title="Router: most chosen expert per MoCE layer (share of images)", title_justify="left")
        table.add_column("dataset")
        for i in range(layers):
            table.add_column(f"L{i}", justify="right")
        for d in expert_sets:
            cells = []
            for row in d.usage["counts"]:
                total = sum(row) or 1
                best = max(range(len(row)), key=lambda e: row[e])
                cells.append(f"e{best} {100 * row[best] / total:.0f}%")
            table.add_row(output.plain(d.dataset), *cells)
        console.print(table)
    class_sets = [d for d in report.datasets if d.usage and d.usage["kind"] == "classes"]
    if class_sets:
        table = Table(title="Router: degradation class per image", title_justify="left")
        table.add_column("dataset")
        table.add_column("classes")
        for d in class_sets:
            table.add_row(
                output.plain(d.dataset), output.plain(", ".join(f"{k} {v}" for k, v in d.usage["counts"].items()))
            )
        console.print(table)
