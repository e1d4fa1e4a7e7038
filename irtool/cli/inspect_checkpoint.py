"""`irtool inspect`: a checkpoint's architecture, config and size, read off its tensors and loaded strictly."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import output
from .options import ConfigFields, RouterConfigFields, Trust, config_fields, json_flag


def inspect(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint file (.ckpt, .pth, .pt, .safetensors), folder or manifest name.")
    ],
    trust_checkpoint: Trust = False,
    as_json: Annotated[bool, json_flag("Print one JSON object instead of a table.")] = False,
    config: ConfigFields = None,
    router_config: RouterConfigFields = None,
) -> None:
    """Detect a checkpoint's architecture and config, load it strictly, and describe it (with the routing calibration that restore would use for it)."""
    from ..loading import build_model, detect, read_state_dict, resolve_source

    fields, router_fields = config_fields(config), config_fields(router_config, "--router-config")
    path = resolve_source(checkpoint)
    sd, metadata = read_state_dict(path, trust=trust_checkpoint)
    model: Any  # an irtool network (its arch, config and parameters are read below)
    if detect(sd, path)[0].name == "clip_router":  # a router file on its own: either option states its fields
        model = build_model(sd, metadata, path, {**(fields or {}), **(router_fields or {})}, option="router_config")
    elif router_fields:
        output.fail(f"--router-config: {path} is not a LoRA-IR router file", 2)
    else:
        model = build_model(sd, metadata, path, fields)
    from ..archs import spec_of
    from ..restoration.calibration import CalibrationError, calibration_in_use, find_calibration

    spec = spec_of(model)
    calibration, problem = None, None
    if spec.capabilities.classifier is None and spec.capabilities.routing is not None:
        try:
            calibration, problem = find_calibration(path, model)
        except CalibrationError as exc:
            problem = str(exc)
    routing = spec.capabilities.routing
    params = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(path),
        "arch": spec.name,
        "title": spec.title,
        #: the released (or test) config these tensors are, by name; None for any other config
        "variant": next((name for name, cfg in spec.variants.items() if cfg == model.config), None),
        "config": model.config.to_dict(),
        "parameters": params,
        "tensors": len(sd),
        "moce_layers": routing.layer_names(model) if routing is not None else [],
        "calibration": calibration_in_use(spec, calibration),
    }
    if as_json:
        output.echo_json(info)
        return
    from rich.table import Table

    table = Table(title=output.plain(f"{path.name}: {info['arch']}"), show_header=False)
    table.add_row("network", output.plain(f"{spec.title} ({info['variant'] or 'unnamed config'})"))
    table.add_row("parameters", f"{params:,}")
    table.add_row("tensors", str(len(sd)))
    for key, value in info["config"].items():
        table.add_row(output.plain(key), output.plain(value))
    if info["moce_layers"]:
        table.add_row("MoCE layers", str(len(info["moce_layers"])))
    shown = output.plain(info["calibration"])
    shown.overflow = "fold"  # a path is shown whole, wrapped, never cut with an ellipsis
    table.add_row("calibration", shown)
    output.stdout().print(table)
    if problem:
        output.warning(problem)
