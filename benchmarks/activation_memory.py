"""Peak activation memory of a MoCE-IR forward, counted tensor by tensor, on any machine (no GPU needed).

    python benchmarks/activation_memory.py --config MoCE_IR --precision bf16 --target 3840x2160

Every tensor storage created during the forward is counted while it lives (a TorchDispatchMode with weakref
finalisers); weights are left out. This is what a caching allocator must hold at least, whatever the device: a lower
bound on `torch.cuda.max_memory_allocated` (which adds weights, cuDNN workspaces and rounding). Activation memory is
linear in the pixel count, so a small run extrapolates to a large image; `--as-large` (default on) makes the small
run take the channel-sliced path that large images take. bf16 means torch.autocast on the CPU, whose op lists match
CUDA's for what matters here (convs and matmuls in bf16, LayerNorm and softmax in fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from irtool.archs import moce_ir  # noqa: E402
from irtool.bench import parse_sizes, random_model  # noqa: E402
from irtool.restoration.tiling import run_padded  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive during the ops it sees, and their peak."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore, self.live, self.peak, self.alive = ignore, 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.alive and key not in self.ignore:
                    self.alive.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.alive.discard(key)
        self.live -= nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="MoCE_IR_S")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--size", default="256", help="size actually run (N or WxH)")
    ap.add_argument("--target", default="3840x2160", help="size to extrapolate to (N or WxH)")
    ap.add_argument("--expert", type=int, default=None, help="impose this expert everywhere (default: the router's)")
    ap.add_argument("--no-as-large", dest="as_large", action="store_false", help="keep the small-image path")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.as_large:
        moce_ir.LOW_MEMORY_PIXELS = 0
    ((h, w),) = parse_sizes(args.size)
    ((th, tw),) = parse_sizes(args.target)
    model = random_model(args.config).eval().requires_grad_(False)
    x = torch.rand(1, 3, h, w)
    routing = None if args.expert is None else model.uniform_routing(1, args.expert)
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    tracker = LiveBytes(weights)
    with torch.inference_mode(), amp, tracker:
        run_padded(model, x, routing=routing)  # sizes that are not a multiple of 8 are padded, as the engine does
    per_px = tracker.peak / (h * w)
    weights_mb = sum(t.numel() * t.element_size() for t in model.parameters()) / 2**20
    print(
        f"{args.config} {args.precision} ({'sliced large-image path' if args.as_large else 'small-image path'}): "
        f"peak activations {per_px:.0f} B/px at {w}x{h} -> {per_px * th * tw / 2**30:.2f} GiB at {tw}x{th} "
        f"(+ {weights_mb:.0f} MiB fp32 weights)"
    )


if __name__ == "__main__":
    main()
