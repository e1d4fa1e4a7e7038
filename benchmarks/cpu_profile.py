"""Where a CPU restore spends its time, per stage and per op (torch.profiler), for several networks and sizes.

    python benchmarks/cpu_profile.py [--models builtin,moce_s,moce,lora_tiny] [--sizes 256,1024] [--top 3]
                                     [--threads N]

For each network, size (a size² crop of scikit-image's `chelsea`, resized, written as PNG) and mode (whole image;
tiled in `size/2` px tiles with 32 px overlap, routed on the image downscaled to 512 px as `irtool restore --tile`
does), one restore through the engine (`Restorer.restore`, after one warm-up pass at that shape) is timed by stage:

- decode: `io.read_image` of the PNG; encode: `io.write_image` of the result (PNG, atomic write)
- route: the separate routing pass of the tiled mode (`net.route` on the downscaled copy; the whole mode routes
  inside its one pass)
- the network's stages: its top-level modules (MoCE-IR: patch_embed, enc, latent, freq_embed, dec, refinement,
  output; LoRA-IR: the CLIP router and the restoration net's intro, encoders, middle_blks, decoders, ending, ...),
  timed with forward hooks; "other" is the rest of the restore call (padding, tiling, blending, conversions)

and, under torch.profiler, the ops with the most self CPU time. Networks: the built-in model (irtool.default, its
shipped weights), MoCE-IR-S and MoCE-IR (random weights: time does not depend on the values, only on the experts the
routers pick), LoRA-IR `tiny` with its tiny CLIP router (random weights; `setting1`'s CLIP ViT is too large to
profile on a 2-core machine in minutes). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from irtool.archs import build
from irtool.images import files as io
from irtool.restoration.engine import Restorer
from irtool.restoration.planning import RestoreOptions


def model(name: str) -> tuple[str, nn.Module | None]:
    torch.manual_seed(0)
    if name == "builtin":
        return "built-in (MoCE-IR dim 16)", None
    if name == "moce_s":
        return "MoCE-IR-S", build("moce_ir", "MoCE_IR_S").eval()
    if name == "moce":
        return "MoCE-IR", build("moce_ir", "MoCE_IR").eval()
    if name == "lora_tiny":
        from irtool.archs.lora_ir import join

        return "LoRA-IR tiny", join(build("lora_ir", "tiny"), build("clip_router", "tiny")).eval()
    raise SystemExit(f"unknown model {name}")


def stage_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(stage, module) for the modules that are called, by top-level name: a container (ModuleList, never called
    itself) stands for the first called modules inside it; a two-part model (LoRA-IR: ir + router) shows its
    restoration net's parts."""

    def called(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            return [pair for child in module.children() for pair in called(name, child)]
        return [(name, module)]

    found: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if name == "ir":
            found += [pair for n, c in child.named_children() for pair in called(f"ir.{n}", c)]
        else:
            found += called(name, child)
    return found


class StageClock:
    """Wall time per stage module (forward hooks), and of the separate routing pass."""

    def __init__(self, net: nn.Module) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.routing = False
        self.handles = []
        for name, module in stage_modules(net):
            self.handles.append(module.register_forward_pre_hook(self._start(module)))
            self.handles.append(module.register_forward_hook(self._stop(name, module)))
        self.started: dict[int, float] = {}

    def _start(self, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self.started[id(module)] = time.perf_counter()

        return hook

    def _stop(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            elapsed = time.perf_counter() - self.started.pop(id(module))
            if not self.routing:  # the routing pass counts as "route" as a whole
                self.seconds[name] += elapsed

        return hook

    def timed_route(self, route: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            self.routing = True
            try:
                return route(*args, **kwargs)
            finally:
                self.routing = False
                self.seconds["route"] += time.perf_counter() - t0

        return wrapped


def profile_case(restorer: Restorer, png: Path, out: Path, top: int) -> dict[str, Any]:
    image = io.read_image(png)
    restorer.restore([image])  # warm-up at this shape (oneDNN primitives, allocator)
    clock = StageClock(restorer.model)
    net = restorer.net
    original_route = net.route
    net.route = clock.timed_route(original_route)  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        image = io.read_image(png)
        decode = time.perf_counter() - t0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t1 = time.perf_counter()
            outcome = restorer.restore([image])[0]
            restore = time.perf_counter() - t1
        t2 = time.perf_counter()
        io.write_image(out, image, outcome.rgb, overwrite=True)
        encode = time.perf_counter() - t2
    finally:
        vars(net).pop("route", None)  # the class's method again
        for handle in clock.handles:
            handle.remove()
    total = decode + restore + encode
    stages = {"decode": decode, **clock.seconds, "encode": encode}
    stages["other"] = max(0.0, restore - sum(clock.seconds.values()))
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    op_total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return {
        "total": total,
        "tiles": outcome.tiles,
        "stages": {k: v / total for k, v in stages.items()},
        "ops": [(e.key, e.self_cpu_time_total / op_total) for e in ops[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="builtin,moce_s,moce,lora_tiny")
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--top", type=int, default=3, help="ops and stages shown per row")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage import data

    work = Path(tempfile.mkdtemp(prefix="irtool-cpu-profile-"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load1 {Path('/proc/loadavg').read_text().split()[0]}"
    )
    print()
    print("| network | size | mode | tiles | total s | decode | route | encode | top stages | top ops (self CPU) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for key in args.models.split(","):
        title, net = model(key)
        for size in [int(s) for s in args.sizes.split(",")]:
            png = work / f"chelsea_{size}.png"
            crop = data.chelsea()[:, 75:375]
            Image.fromarray(np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))).save(png)
            for mode, tile in (("whole", 0), ("tiled", size // 2)):
                options = RestoreOptions(device="cpu", tile=tile, tile_overlap=32)
                restorer = Restorer(net, options) if net is not None else Restorer.load(options)
                row = profile_case(restorer, png, work / "out.png", args.top)
                s = row["stages"]
                network = {k: v for k, v in s.items() if k not in ("decode", "route", "encode")}
                best = sorted(network.items(), key=lambda kv: kv[1], reverse=True)[: args.top]
                print(
                    f"| {title} | {size}² | {mode} | {row['tiles']} | {row['total']:.2f} | {s['decode']:.0%} | "
                    f"{s.get('route', 0.0):.0%} | {s['encode']:.0%} | "
                    + ", ".join(f"{k} {v:.0%}" for k, v in best)
                    + " | "
                    + ", ".join(f"{k.removeprefix('aten::')} {v:.0%}" for k, v in row["ops"])
                    + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
