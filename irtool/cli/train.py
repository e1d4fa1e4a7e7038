"""`irtool train`: the training config's fields as flags, the run watched on the terminal.

The flags are made from `TrainConfig`'s fields (irtool/train/presets.py): each field is `--field-name` (or the names
its metadata gives), typed as the field is, with the help line and --help panel of its
metadata, so a new field is a flag without a change here. Fields no flag can spell (the task sources, the network's
`model` mapping) are set by --clean-dir/--tasks, --config-file and the network flags (`presets.MODEL_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Annotated, Any

import typer

from ..train import presets
from . import output
from .base import Interrupted
from .options import DEVICE_HELP, device_option, int_list, json_flag

# -- the flags made from the config's fields


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """One generated flag: it sets a `TrainConfig` field, or (`model_key`) an entry of the field `model`."""

    param: str  #: the keyword Typer passes its value as
    names: tuple[str, ...]  #: e.g. ("--loss",) for pixel_loss; a bool's first name becomes "--x/--no-x"
    kind: type  #: bool, int, float or str; for a sequence, its elements' type
    sequence: bool = False  #: comma-separated values, read as a tuple
    length: int | None = None  #: a fixed-length sequence's length (betas: 2)
    help: str = ""
    panel: str = "Other"
    field: str | None = None
    model_key: str | None = None

    def parameter(self) -> inspect.Parameter:
        """The keyword parameter Typer reads this flag from (default None: not given, the preset's value stays)."""
        if self.kind is bool:
            long, *short = self.names
            option = typer.Option(f"{long}/--no-{long[2:]}", *short, help=self.help, rich_help_panel=self.panel)
            annotation: Any = Annotated[bool | None, option]
        else:
            value_type: Any = str if self.sequence else self.kind
            option = typer.Option(*self.names, help=self.help, rich_help_panel=self.panel, show_default=False)
            annotation = Annotated[value_type | None, option]
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    def value(self, given: Any) -> Any:
        """The config value of what was given: comma-separated text read as a tuple of `kind`."""
        if not self.sequence:
            return given
        flag = self.names[0]
        if self.kind is int:
            values: tuple[Any, ...] = int_list(given, flag)
        else:
            try:
                values = tuple(self.kind(v) for v in given.split(",") if v.strip())
            except ValueError:
                raise typer.BadParameter(
                    f"{given!r}: expected comma-separated numbers, e.g. 0.9,0.999", param_hint=flag
                ) from None
        if self.length is not None and len(values) != self.length:
            raise typer.BadParameter(f"{given!r}: expected {self.length} comma-separated values", param_hint=flag)
        return values


def _shape(hint: Any) -> tuple[type, bool, int | None] | None:
    """(type, sequence, length) of a field a flag can spell: a bool, int, float or str, or a tuple of one of them
    (optional or not); None for anything else."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) != 1:
            return None
        hint = members[0]
    if hint in (bool, int, float, str):
        return hint, False, None
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and args[0] in (int, float, str):
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], True, None
        if all(a is args[0] for a in args):
            return args[0], True, len(args)
    return None


def _with_default(help: str, default: Any, kind: type) -> str:
    if default is None or default is dataclasses.MISSING or kind is bool or default == "":
        return help
    shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
    return f"{help} (default {shown})".strip()


#: the network's fields inside `TrainConfig.model`, by flag (`presets.MODEL_FIELDS`): element type, sequence, help
_MODEL_FLAGS: dict[str, tuple[type, bool, str]] = {
    "dim": (int, False, "Base width."),
    "blocks": (int, True, "Encoder blocks per level then latent, e.g. 4,6,6,8."),
    "dec_blocks": (int, True, "Decoder (MoCE) blocks per level, e.g. 2,4,4."),
    "refinement_blocks": (int, False, "Refinement blocks after the decoder."),
    "heads": (int, True, "Attention heads per level, e.g. 1,2,4,8."),
    "experts": (int, False, "Complexity experts per MoCE layer (4)."),
    "top_k": (int, False, "Experts each MoCE layer applies per image."),
}
#: fields set by options of their own rather than by a flag of their name: --preset chooses the recipe
_DECLARED_FIELDS = {"preset"}


def config_flags() -> list[ConfigFlag]:
    """Every flag made from `TrainConfig`'s fields, in field order, then the network flags."""
    hints = typing.get_type_hints(presets.TrainConfig)
    flags = []
    for f in dataclasses.fields(presets.TrainConfig):
        shape = _shape(hints[f.name])
        if f.name in _DECLARED_FIELDS or shape is None:
            continue
        kind, sequence, length = shape
        names = tuple(f.metadata.get("names") or ()) or ("--" + f.name.replace("_", "-"),)
        help = _with_default(f.metadata.get("help", f"The training config's field {f.name}."), f.default, kind)
        flags.append(ConfigFlag(f.name, names, kind, sequence, length, help, f.metadata.get("panel", "Other"), f.name))
    for flag, key in presets.MODEL_FIELDS.items():
        kind, sequence, help = _MODEL_FLAGS.get(flag, (int, False, f"The network config's field {key}."))
        names = ("--" + flag.replace("_", "-"),)
        flags.append(ConfigFlag(f"model_{flag}", names, kind, sequence, None, help, "Network", model_key=key))
    return flags


CONFIG_FLAGS = config_flags()


def overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The config fields the generated flags in `values` (by parameter name) set; the network's under "model"."""
    fields: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for flag in CONFIG_FLAGS:
        if values.get(flag.param) is None:
            continue
        if flag.model_key is not None:
            model[flag.model_key] = flag.value(values[flag.param])
        else:
            fields[str(flag.field)] = flag.value(values[flag.param])
    if model:
        fields["model"] = model
    return fields


# -- the command


def train(
    out: Annotated[
        str,
        typer.Option(
            "--out", "--output", "-o", help="Run folder: weights, training state, logs.", rich_help_panel="Run"
        ),
    ] = "runs/train",
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            help=f"Named recipe: {', '.join(presets.PRESETS)} (default: custom on a CUDA GPU, quick elsewhere).",
            rich_help_panel="Run",
        ),
    ] = None,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config-file",
            help="JSON or TOML file of config fields, laid over the preset (--print-config writes one).",
            rich_help_panel="Run",
        ),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as JSON and exit.", rich_help_panel="Run")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out from its last checkpoint, bit-exactly.", rich_help_panel="Run"
        ),
    ] = False,
    device: Annotated[
        str,
        device_option(f"{DEVICE_HELP} Under torchrun each process takes cuda:LOCAL_RANK.", rich_help_panel="Run"),
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch.", rich_help_panel="Run")
    ] = None,
    as_json: Annotated[bool, json_flag("Print the final summary as one JSON object.", rich_help_panel="Run")] = False,
    clean_dir: Annotated[
        str | None,
        typer.Option(
            "--clean-dir", help="Folder of clean photos, degraded on the fly by --tasks.", rich_help_panel="Data"
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help=f"Synthetic degradations for --clean-dir: {','.join(presets.SYNTHETIC_TASKS)} (clean: identity pairs; default all).",
            rich_help_panel="Data",
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Train an all-in-one network on a mix of degradations (one process, or many under torchrun).

    Without --preset: the paper's network (preset custom) on a CUDA GPU, a run of minutes (preset quick) elsewhere.

    Examples:

      irtool train --clean-dir photos/ --out runs/quick
          a quick run on a CPU (preset quick: about 10 minutes)
      irtool train --preset moce_ir_s-aio3 --data-root ~/datasets --device cuda
          the paper's MoCE-IR-S recipe on a GPU (torchrun for several)
    """
    import os

    fields = overrides(flags)
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    chosen = None
    if not resume and preset is None and config_file is None:
        preset = chosen = presets.default_preset(_has_cuda(device))
    if resume:  # the saved recipe, with the flags laid over it: the same flags change nothing, others are refused
        cfg = presets.resume_config(
            out, fields, preset_name=preset, config_file=config_file, clean_dir=clean_dir, tasks=task_list
        )
    else:
        cfg = presets.resolve(preset, config_file, fields, clean_dir=clean_dir, tasks=task_list)
    if print_config:
        typer.echo(cfg.to_json())
        return
    if chosen == "quick" and int(os.environ.get("RANK", "0")) == 0:
        output.line(_quick_line(cfg, device), output.stderr())

    from ..train.loop import TrainInterrupted
    from ..train.loop import train as run_training

    main_process = int(os.environ.get("RANK", "0")) == 0
    view = TrainView(as_json) if main_process else None
    try:
        run_training(cfg, out, resume=resume, device=device, threads=threads, on_event=view)
    except TrainInterrupted as stopped:
        raise Interrupted(f"{stopped}; continue with --resume") from None
    finally:
        if view is not None:
            view.close()


def _has_cuda(device: str) -> bool:
    """Whether the run trains on a CUDA GPU (`auto` finds out, which imports torch)."""
    if device != "auto":
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def _quick_line(cfg: presets.TrainConfig, device: str) -> str:
    """The line before a run of the CPU default: what runs, for about how long, and how to choose otherwise."""
    quick, custom = presets.preset("quick"), presets.preset("custom")
    length = f"{cfg.steps:,} steps" if cfg.steps is not None else f"{cfg.epochs} epochs"
    same_cost = all(getattr(cfg, f) == getattr(quick, f) for f in ("variant", "model", "batch_size", "patch_size"))
    minutes = (cfg.steps or 0) * presets.CPU_SECONDS_PER_STEP["quick"] / 60
    if same_cost and cfg.steps is not None:
        time = f"about {minutes:.0f} min on a free CPU core" if minutes >= 1 else "under a minute on a CPU core"
    else:
        time = "its ETA shows once it runs"
    hours = (custom.steps or 0) * presets.CPU_SECONDS_PER_STEP["custom"] / 3600
    where = "no CUDA GPU" if device == "auto" else f"--device {device}"
    return (
        f"{where}: training preset quick (the built-in model's small network, {length}; {time}); the paper's "
        f"MoCE-IR-S is --preset custom (about {hours:.0f} h on a CPU core), or choose --steps, --variant"
    )


def _signature() -> inspect.Signature:
    """train's own options, then one keyword parameter per generated flag (Typer reads the flags from this)."""
    own = [p for p in inspect.signature(train, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    made = [flag.parameter() for flag in CONFIG_FLAGS]
    names = [p.name for p in own + made]
    assert len(set(names)) == len(names), f"a generated train flag's parameter clashes: {names}"
    return inspect.Signature(own + made, return_annotation=None)


train.__signature__ = _signature()  # type: ignore[attr-defined]  # the generated flags, for Typer


# -- what the run shows


class TrainView:
    """Renders training events (rank 0 only). On a terminal: a progress bar with loss, it/s and ETA, and under it a
    line with the learning rate, per-task losses and Art's weights; elsewhere (logs, pipes) one plain line per logged
    step. Validations and warnings get a line each; a summary ends the run."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = output.stderr()
        self.live: Any = None
        self.progress: Any = None
        self.detail: Any = None
        self.bar: Any = None

    def _start_bar(self, total: int, done: int) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}", markup=False),
            TextColumn("{task.fields[eta]}", markup=False),
            TextColumn("{task.fields[loss]}", markup=False),
            console=self.console,
        )
        self.bar = self.progress.add_task("train", total=total, completed=done, rate="", eta="", loss="")
        self.detail = Text("")
        self.live = Live(Group(self.progress, self.detail), console=self.console, refresh_per_second=4)
        self.live.start()

    def _console(self) -> Any:
        return self.live.console if self.live is not None else self.console

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            self._start(info)
        elif kind == "step":
            self._step(info)
        elif kind == "val":
            unit = " dB" if info["metric"] == "psnr" else "%"
            per = " ".join(f"{t} {v:.2f}" for t, v in info["result"].items() if t != "mean")
            output.line(
                f"step {info['step']}: validation {info['metric']} {info['result']['mean']:.2f}{unit} ({per}); "
                f"best {info['best']:.2f}{unit} at step {info['best_step']}",
                self._console(),
            )
        elif kind == "warning":
            output.warning(info["message"], self._console())
        elif kind == "end":
            self._end(info)

    def _start(self, info: dict) -> None:
        output.line(
            f"training {info['parameters']:,} parameters ({info['trainable']:,} trainable) on {info['device']}"
            f" x{info['world_size']}: {info['samples']:,} samples per epoch, {info['total_steps']:,} steps, tasks "
            f"{', '.join(info['tasks'])}, {info['val_pairs']} validation images -> {info['out']}",
            self.console,
        )
        if info["start_step"]:
            output.line(f"resuming at step {info['start_step']}", self.console)
        if self.console.is_terminal:
            self._start_bar(info["total_steps"], info["start_step"])

    def _step(self, info: dict) -> None:
        import math

        tasks = " ".join(f"{t} {v:.4f}" for t, v in zip(info["tasks"], info["task_loss"]) if not math.isnan(v))
        weights = ""
        if info.get("weights"):
            weights = " | Art " + " ".join(f"{t} {w:.2f}" for t, w in zip(info["tasks"], info["weights"]))
        eta_s = int(info["eta_s"])
        eta = f"ETA {eta_s // 3600}:{eta_s // 60 % 60:02d}:{eta_s % 60:02d}"
        if self.bar is None:
            output.line(
                f"step {info['step']}/{info['total_steps']} loss {info['loss']:.4f} lr {info['lr']:.2e} "
                f"{info['it_per_s']:.2f} it/s {eta} | {tasks}{weights}",
                self.console,
            )
            return
        self.progress.update(
            self.bar,
            completed=info["step"],
            rate=f"{info['it_per_s']:.2f} it/s",
            eta=eta,
            loss=f"loss {info['loss']:.4f}",
        )
        self.detail.plain = f"lr {info['lr']:.2e} | {tasks}{weights}"

    def _end(self, info: dict) -> None:
        self.close()
        if self.as_json:
            output.echo_json(info)
            return
        unit = " dB" if info["metric"] == "psnr" else "%"
        best = (
            f", best validation {info['metric']} {info['best']:.2f}{unit} at step {info['best_step']}"
            if info["best_weights"]
            else ""
        )
        final = f", final loss {info['final_loss']:.4f}" if info["final_loss"] is not None else ""
        output.line(
            f"done: {info['trained_steps']} steps in {info['seconds']:.0f} s (step {info['steps']}, "
            f"epoch {info['epochs']:.2f}){final}{best}",
            self.console,
        )
        output.line(
            f"weights: {info['weights']}" + (f", {info['best_weights']}" if info["best_weights"] else ""), self.console
        )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
