"""The restore engine: plan -> read -> route -> tile -> model -> write.

- `planning.plan(inputs, out_dir, options)` expands files, folders (recursively; the output mirrors the tree) and globs into
  `Job`s and applies the naming and the skip/overwrite rules. Nothing is loaded or written. (It lives in the
  torch-free `planning` with `RestoreOptions`, so `--dry-run` starts instantly; import both from there.)
- `Restorer.load(options)` loads the model once (explicit `--weights`, a manifest `--model`, or the default chain),
  picks the device and precision, and finds the routing calibration (the user's for these weights, else the one
  shipped beside them).
- `Restorer.restore(images)` restores a batch of same-size `io.Image`s: routing, optional tiling with a shared
  routing, reduced precision with an fp32 redo on NaN/Inf, and tiling on out-of-memory, halving until it fits.
- `restore_files(jobs, restorer)` runs jobs with decoding and encoding in threads around the model, batching
  same-size neighbours, and yields one `RestoreReport` per job, in job order.
- `restore(...)` is the Python API (`irtool.restore`), used by the CLI too.

Each fact is decided once and carried forward: the bit depth and metadata found by `io.read_image` go back out
through `io.write_image`; the routing decided on the whole (downscaled) image is imposed on its tiles.

Imports torch, numpy and irtool's images (files, tensors), jobs, policy, tiling, loading, restoration.calibration
and weights modules.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..archs.spec import Restoring, RoutingRecord, restoring, spec_of
from ..devices import policy
from ..errors import ImageError, IrtoolError, first_line
from ..images import files as io
from ..images.tensors import from_tensor, to_tensor
from .planning import Job, RestoreOptions, RestoreReport, expand_inputs, plan, report_unrunnable
from .tiling import layout_note, pad_to_multiple, run_padded, tiled_forward

#: the smallest tile the out-of-memory fallback tries before giving up
MIN_TILE = 64
_OOM_ERRORS = tuple(
    {e for e in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if e is not None}
)


class OutOfMemory(IrtoolError):
    """The model does not fit even with the smallest tiles."""


# --------------------------------------------------------------------------------------------------------------------
# Choosing and loading the model


def _shrunk(h: int, w: int, size: int, multiple: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is about `size`, both sides rounded to multiples of `multiple`: the size a
    large image is routed at (the same for the float and the samples paths)."""
    scale = size / max(h, w)
    return max(multiple, int(round(h * scale / multiple)) * multiple), max(
        multiple, int(round(w * scale / multiple)) * multiple
    )


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, _OOM_ERRORS):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


@dataclass
class Outcome:
    """The result of restoring one image (before writing)."""

    rgb: np.ndarray | None  #: (H, W, 3) float32 in [0, 1]; None when `samples` hold the result
    degradation: str | None = None
    confidence: float | None = None
    experts: list[list[int]] | None = None
    gates: list[list[float]] | None = None
    routing: str = "whole"
    tiles: int = 1
    tile_size: list[int] | None = None
    precision: str = "fp32"
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    #: the tiled path for large images: restored colour already in the image's sample type (see tiled_samples)
    samples: np.ndarray | None = None


def _routing_summary(routing: RoutingRecord | None) -> tuple[list[list[int]] | None, list[list[float]] | None]:
    """One image's chosen experts and their gates as (layers, k) lists (each routing type knows its own layout)."""
    if routing is None:
        return None, None
    return routing.summary()


def _image_routing(routing: RoutingRecord | None, i: int) -> RoutingRecord | None:
    """Image i's routing of a batch's (None for a network without routing)."""
    return None if routing is None else routing[i]


@dataclass
class _Pass:
    """One forward pass over a batch: output (B, 3, H, W), the routing to report, how it was routed and tiled."""

    output: Tensor
    routing: Any
    mode: str
    tiles: int
    tile_size: list[int] | None
    layout: str | None = None  #: tiling.layout_note for this pass's tiles, when the overlap took more than asked


class Restorer:
    """A loaded model with its device, precision and calibration: restores batches of same-size images.

    The only state besides the model is the tile size learnt from an out-of-memory error, so that later large
    images start there instead of failing again.
    """

    def __init__(
        self,
        model: nn.Module,
        options: RestoreOptions | None = None,
        *,
        device: torch.device | None = None,
        calibration: Any = None,
        source: str | None = None,
        weights_path: Path | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.options = options or RestoreOptions()
        self.options.check()
        try:
            self.spec = spec_of(model)
        except TypeError as exc:
            raise IrtoolError(str(exc)) from None
        #: H and W the network takes are multiples of this; the engine pads (by the spec's rule) and crops back
        self.multiple = self.spec.capabilities.size_multiple(model)
        self.padding = self.spec.capabilities.padding
        self.model = model.eval()
        self.net: Restoring = restoring(self.model)  #: the model seen through its contract (run, route)
        self.device = device or next(model.parameters()).device
        self.amp_dtype, setup_notes = policy.resolve_precision(self.options.precision, self.device)
        caps = self.spec.capabilities
        if (asked := policy.precision_name(self.amp_dtype)) not in caps.precisions:  # what the network can run in
            setup_notes.append(f"{self.spec.title} does not run in {asked}; running fp32")
            self.amp_dtype = None
        if self.options.tile and not caps.tiling.supported:
            setup_notes.append(f"--tile {self.options.tile}: {self.spec.title} cannot run in tiles; whole images")
        self.calibration = calibration
        self.source = source  #: how the model was chosen, for messages
        self.weights_path = weights_path  #: the checkpoint file, when loaded from one
        self.notes = list(notes) + setup_notes  #: things to tell the user once per run
        self.learned_tile: int | None = None
        self._told: set[str] = set()  # layout notes already given: once per run, not once per image
        #: model passes run at once (tiles of one image, or whole images in restore_files); see `cpu_workers`
        self.model_workers = 1
        self._pool: ThreadPoolExecutor | None = None
        from ..images.memory import whole_image_pixels

        #: images above this many pixels are restored in tiles from their samples (see `restore_large`)
        self.whole_pixels = whole_image_pixels()

    @classmethod
    def load(cls, options: RestoreOptions) -> Restorer:
        """Load the model named by the options (or the default one) once, with its calibration."""
        from ..loading import default_source, load_model, resolve_model_files
        from .calibration import find_calibration

        options.check()
        notes: list[str] = []
        source: str | Path | None = options.weights or options.model
        if source:  # a file, a folder or a manifest name, resolved as load_model resolves it
            router = options.router
            path = resolve_model_files(source, router).main
            how = str(path) if options.weights else f"{options.model} ({path})"
        else:
            source, default_router, how = default_source()
            path, router = source, options.router or (str(default_router) if default_router else None)
            notes.append(f"using {how}")
        device = policy.resolve_device(options.device)
        model = load_model(
            source,
            device=device,
            trust=options.trust,
            router=router,
            config=options.config,
            router_config=options.router_config,
        )
        calibration = None
        if spec_of(model).capabilities.classifier is None:
            calibration, warning = find_calibration(path, model, options.calibration)
            if warning:
                notes.append(warning)
        return cls(
            model, options, device=device, calibration=calibration, source=how, weights_path=Path(path), notes=notes
        )

    # -- CPU workers

    @contextlib.contextmanager
    def cpu_workers(self) -> Iterator[int]:
        """On a CPU: split `options.threads` (0: torch's thread count) into independent model workers when other work
        competes for the cores (see irtool.devices.speed.cpu_split, cpu_contended) for the duration, then put torch's
        thread count back. Yields the number of workers (1 elsewhere: a GPU runs one pass at a time)."""
        if self.device.type != "cpu" or self.model_workers > 1:
            yield self.model_workers
            return
        from ..devices import speed

        before = torch.get_num_threads()
        alone = (self.options.threads or before) == 1  # one thread: nothing to split, no need to sample the run queue
        workers, per_worker = speed.cpu_split(
            self.options.threads, before, contended=not alone and speed.cpu_contended()
        )
        torch.set_num_threads(per_worker)
        self.model_workers = workers
        try:
            yield workers
        finally:
            self.model_workers = 1
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            torch.set_num_threads(before)

    def _map(self, fn: Callable[[Any], Any], items: list[Any], dtype: torch.dtype | None) -> list[Any]:
        """[fn(item) for item in items], on the model workers when there are several. Inference mode and autocast
        are per thread: each call enters them itself."""

        def call(item: Any) -> Any:
            with torch.inference_mode(), self._autocast(dtype):
                return fn(item)

        if self.model_workers <= 1 or len(items) <= 1:
            return [call(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.model_workers, thread_name_prefix="irtool-tile")
        return list(self._pool.map(call, items))

    def _mapper(self, dtype: torch.dtype | None) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None:
        """The `map_batches` of the tiled paths: the model workers, or None (one batch after another) with one."""
        if self.model_workers <= 1:
            return None
        return lambda fn, items: self._map(fn, items, dtype)

    # -- routing and forward passes

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        return policy.autocast(self.device, dtype)

    def route(self, x: Tensor, dtype: torch.dtype | None | str = "default") -> Any:
        """The model's routing for x (B, 3, H, W) on this device, at this precision."""
        dtype = self.amp_dtype if dtype == "default" else dtype
        with torch.inference_mode(), self._autocast(dtype):  # type: ignore[arg-type]
            return self.net.route(self._route_input(x))

    def _route_input(self, x: Tensor) -> Tensor:
        """x as the router takes it: a router of its own (LoRA-IR's classifier) reads the image as given; a network
        that routes inside its restoration pass (MoCE-IR) needs the size multiple."""
        routing = self.spec.capabilities.routing
        return x if routing is not None and routing.separate else pad_to_multiple(x, self.multiple, self.padding)

    def _downscaled(self, x: Tensor) -> Tensor:
        """x with its longer side shrunk to `route_size` (area averaging), sides kept multiples of the model's."""
        size = self.options.route_size
        h, w = x.shape[-2:]
        if not size or max(h, w) <= size:
            return x
        return F.interpolate(x, size=_shrunk(h, w, size, self.multiple), mode="area")

    def _forward(self, x: Tensor, tile: int, dtype: torch.dtype | None, imposed: Any = None) -> _Pass:
        """One pass over a same-size batch at one precision, whole or tiled (no error handling). `imposed`: a
        routing for every image of the batch (e.g. one shot's, for its video frames) instead of routing them."""
        model, options = self.net, self.options
        b, _, h, w = x.shape
        multiple = self.multiple
        with torch.inference_mode(), self._autocast(dtype):
            if not tile or max(h, w) <= tile:
                # padded by the spec's rule and cropped back; a router of its own reads the image as given
                result = run_padded(self.model, x, routing=imposed)
                if imposed is not None:
                    return _Pass(result.output.float(), imposed, "imposed", 1, None)
                return _Pass(result.output.float(), result.routing, "whole", 1, None)
            # Whole or tiled, the network sees the same canvas (padded by the spec's rule): they agree at the borders.
            padded = pad_to_multiple(x, multiple, self.padding)
            # Global routers (MoCE-IR's, LoRA-IR's) and attention: by default the whole image decides once.
            caps = self.spec.capabilities
            per_tile = imposed is None and (
                caps.routing is None
                or options.route_per_tile
                or not caps.tiling.shared_routing
                or not caps.imposed_routing
            )
            if imposed is not None or caps.routing is None:
                shared = imposed
            else:
                shared = model.route(self._route_input(self._downscaled(x)))
            outputs, tiles, tile_size = [], 1, None
            for i in range(b):
                mine = None if per_tile else shared[i]

                def run(t: Tensor, r: Any = mine) -> Tensor:  # one image's routing, imposed on each of its tiles
                    if r is None:
                        return model.run(t).output
                    return model.run(t, routing=r[torch.zeros(t.shape[0], dtype=torch.long)]).output

                out, grid = tiled_forward(
                    run,
                    padded[i : i + 1],
                    tile,
                    options.tile_overlap,
                    multiple,
                    options.batch_size,
                    map_batches=self._mapper(dtype),
                )
                outputs.append(out[..., :h, :w])
                tiles, tile_size = len(grid), list(grid.tile_size)
            mode = "imposed" if imposed is not None else "per-tile" if per_tile else "downscaled"
            layout = layout_note(padded.shape[-2], padded.shape[-1], tile, options.tile_overlap, multiple)
            return _Pass(torch.cat(outputs), shared, mode, tiles, tile_size, layout)

    def _start_tile(self, h: int, w: int) -> int:
        if not self.spec.capabilities.tiling.supported:
            return 0
        tile = self.options.tile
        if self.learned_tile and max(h, w) > self.learned_tile:
            tile = min(tile, self.learned_tile) if tile else self.learned_tile
        return tile

    def _smaller_tile(self, side: int) -> int:
        """After an out-of-memory error at tiles of `side` px: half that (a multiple of the model's), remembered for
        later images; OutOfMemory when that is below the smallest tile, or the model cannot run in tiles."""
        if not self.spec.capabilities.tiling.supported:
            raise OutOfMemory(f"out of memory, and {self.spec.title} cannot run in tiles; try --device cpu")
        multiple = self.multiple
        smaller = (side // 2) // multiple * multiple
        if smaller < max(MIN_TILE, multiple):
            raise OutOfMemory(f"out of memory even with {side} px tiles; try --device cpu, or free GPU memory")
        self.learned_tile = smaller if not self.learned_tile else min(self.learned_tile, smaller)
        return smaller

    def _fit(self, x: Tensor, dtype: torch.dtype | None, warnings: list[list[str]], imposed: Any = None) -> list[_Pass]:
        """Forward passes for the batch, splitting it and then tiling (halving) on out-of-memory errors.
        Returns one pass for the whole batch, or one per image after a split."""
        b, _, h, w = x.shape
        tile = self._start_tile(h, w)
        while True:
            try:
                return [self._forward(x, tile, dtype, imposed)]
            except RuntimeError as exc:  # CUDA/MPS/CPU allocation failures are RuntimeErrors
                if not _is_oom(exc):
                    raise
            _free_memory(self.device)
            if b > 1:
                passes: list[_Pass] = []
                for i in range(b):
                    sub: list[list[str]] = [warnings[i]]
                    passes += self._fit(x[i : i + 1], dtype, sub, None if imposed is None else imposed[i])
                return passes
            tile = self._smaller_tile(tile if tile and tile < max(h, w) else max(h, w))
            warnings[0].append(f"out of memory: retried with {tile} px tiles")

    def restore(self, images: Sequence[io.Image], routing: Any = None) -> list[Outcome]:
        """Restore same-size images in one batch (see the module docstring). Raises OutOfMemory or the model's
        errors for the whole batch; callers isolate failures per image by retrying one by one.

        routing: impose this routing of one image on every image of the batch (whole or tiled; the video package gives
        all frames of a shot one routing), instead of letting each image route itself. It is what gets reported."""
        if not images:
            return []
        if routing is not None and not self.spec.capabilities.imposed_routing:
            raise IrtoolError(f"{self.spec.title} cannot take a given routing; let each image route itself")
        sizes = {(im.height, im.width) for im in images}
        if len(sizes) != 1:
            raise ValueError(f"a batch must hold images of one size, got {sorted(sizes)}")
        started = time.perf_counter()
        x = to_tensor(np.stack([im.rgb for im in images]), self.device, pin=self.device.type == "cuda")
        warnings: list[list[str]] = [[] for _ in images]
        imposed = None if routing is None else routing[torch.zeros(len(images), dtype=torch.long)]
        passes = self._fit(x, self.amp_dtype, warnings, imposed)
        per_image: list[tuple[_Pass, int]] = []
        for p in passes:
            per_image += [(p, i) for i in range(p.output.shape[0])]
        outcomes: list[Outcome] = []
        for k, (p, i) in enumerate(per_image):
            output, dtype, routing = p.output[i : i + 1], self.amp_dtype, _image_routing(p.routing, i)
            if dtype is not None and not bool(torch.isfinite(output).all()):
                # Reduced precision overflowed: this image again, in fp32.
                warnings[k].append(f"{policy.precision_name(dtype)} output had NaN/Inf; redone in fp32")
                redo = self._fit(x[k : k + 1], None, [warnings[k]], None if imposed is None else imposed[k])[0]
                output, dtype, routing, p = redo.output, None, _image_routing(redo.routing, 0), redo
            outcomes.append(self._outcome(output, routing, p, dtype, warnings[k], images[k].pixels))
        seconds = (time.perf_counter() - started) / len(images)
        for outcome in outcomes:
            outcome.seconds = seconds
        return outcomes

    def _outcome(
        self,
        output: Tensor,
        routing: Any,
        p: _Pass,
        dtype: torch.dtype | None,
        warnings: list[str],
        pixels: np.ndarray | None = None,
    ) -> Outcome:
        rgb = from_tensor(output[0])
        name, confidence = self.name_degradation(routing, pixels)
        experts, gates = _routing_summary(routing)
        if p.layout is not None and p.layout not in self._told:
            self._told.add(p.layout)
            warnings = [*warnings, p.layout]
        return Outcome(
            rgb=rgb,
            degradation=name,
            confidence=confidence,
            experts=experts,
            gates=gates,
            routing=p.mode,
            tiles=p.tiles,
            tile_size=p.tile_size,
            precision=policy.precision_name(dtype),
            warnings=list(warnings),
        )

    # -- large images: tiles from the decoded samples (tiled_samples), no float copy of the whole image

    def needs_tiled_samples(self, image: io.Image) -> bool:
        """Whether an image is too large for a whole-image pass (or its float32 copies) in this machine's memory."""
        return image.height * image.width > self.whole_pixels and self.spec.capabilities.tiling.supported

    def restore_large(self, image: io.Image) -> Outcome:
        """Restore one large image tile by tile from `image.pixels` (see tiled_samples): the result comes back as
        samples in the image's type. Same tiling, blending and shared routing as the tiled float path; an
        out-of-memory error halves the tile, as there."""
        started = time.perf_counter()
        notes: list[str] = []
        tile = self._start_tile(image.height, image.width)
        if not tile:
            from .tiled_samples import AUTO_TILE

            tile = AUTO_TILE
            notes.append(
                f"{image.width}x{image.height} is too large to restore in one piece in this machine's memory; "
                f"restored in {tile} px tiles"
            )
        caps = self.spec.capabilities
        routed = not self.options.route_per_tile and caps.routing is not None and caps.imposed_routing
        shared = self._route_large(image, notes) if routed else None
        samples, tiles, tile_size, dtype = self._tiles_from_samples(image, tile, shared, notes)
        routing = shared[0] if shared is not None else None
        name, confidence = self.name_degradation(routing, image.pixels)
        experts, gates = _routing_summary(routing) if routing is not None else (None, None)
        return Outcome(
            rgb=None,
            samples=samples,
            degradation=name,
            confidence=confidence,
            experts=experts,
            gates=gates,
            routing="per-tile" if self.options.route_per_tile else "downscaled",
            tiles=tiles,
            tile_size=list(tile_size),
            precision=policy.precision_name(dtype),
            seconds=time.perf_counter() - started,
            warnings=notes,
        )

    def _route_large(self, image: io.Image, notes: list[str]) -> Any:
        """The routing of a large image, decided on its samples area-downscaled to `route_size` (512 when 0)."""
        from .tiled_samples import area_downscale

        if not self.options.route_size:
            notes.append("--route-size 0 (full size) is not possible for an image this large; routed at 512 px")
        size = _shrunk(image.height, image.width, self.options.route_size or 512, self.multiple)
        return self.route(to_tensor(area_downscale(image.pixels, size)[None], self.device))

    def _tiles_from_samples(
        self, image: io.Image, tile: int, shared: Any, notes: list[str]
    ) -> tuple[np.ndarray, int, tuple[int, int], torch.dtype | None]:
        """(restored samples, tile count, tile size, the precision that ran) for `restore_large`: every tile at this
        run's precision until one overflows (then fp32 from there on), halving the tile on out-of-memory errors."""
        from .tiled_samples import restore_tiled

        model, options = self.net, self.options
        multiple = self.multiple
        dtype_used = [self.amp_dtype]

        def run(t: Tensor) -> Tensor:
            def once(dtype: torch.dtype | None) -> Tensor:
                with torch.inference_mode(), self._autocast(dtype):
                    if shared is None:
                        return model.run(t).output
                    return model.run(t, routing=shared[torch.zeros(t.shape[0], dtype=torch.long)]).output

            out = once(dtype_used[0])
            if dtype_used[0] is not None and not bool(torch.isfinite(out).all()):
                notes.append(f"{policy.precision_name(dtype_used[0])} output had NaN/Inf; redone in fp32")
                dtype_used[0] = None
                out = once(None)
            return out

        while True:
            try:
                samples, tiles, tile_size = restore_tiled(
                    image.pixels,
                    image.gray,
                    run,
                    tile=tile,
                    overlap=options.tile_overlap,
                    multiple=multiple,
                    batch=options.batch_size,
                    device=self.device,
                    out_dtype=np.dtype(image.dtype),
                    padding=self.padding,
                    map_batches=self._mapper(None),  # `once` sets the precision itself
                )
                return samples, tiles, tile_size, dtype_used[0]
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
            _free_memory(self.device)
            tile = self._smaller_tile(tile)
            notes.append(f"out of memory: retried with {tile} px tiles")

    def name_degradation(
        self, routing: RoutingRecord | None, pixels: np.ndarray | None = None
    ) -> tuple[str, float | None]:
        """(name, confidence) for one image: the model's own classifier (LoRA-IR), else the routing calibration
        (MoCE-IR). Where those answer "unknown" (or there are none) and `pixels` (the input) are given, an image
        that carries coarse JPEG quantisation is named "jpeg", its confidence the strength of that trace
        (irtool.images.jpeg_trace): a clean photo and a JPEG of it route alike."""
        name, confidence = self._routed_name(routing)
        if name == "unknown" and pixels is not None:
            from ..images.jpeg_trace import NAMED_QUALITY, jpeg_trace

            try:
                trace = jpeg_trace(pixels)
            except (ValueError, MemoryError):  # naming never fails a restore
                trace = None
            if trace is not None and trace.compressed and trace.quality <= NAMED_QUALITY:
                return "jpeg", round(trace.score, 3)
        return name, confidence

    def _routed_name(self, routing: RoutingRecord | None) -> tuple[str, float | None]:
        classifier = self.spec.capabilities.classifier
        if routing is None:  # a network without routing
            return "unknown", None
        try:
            if classifier is not None:
                return classifier.classify(self.model, routing)[0]
            if self.calibration is not None and routing.logits is not None:
                return self.calibration.classify(routing)[0]
        except (ValueError, RuntimeError):
            pass
        return "unknown", None


# --------------------------------------------------------------------------------------------------------------------
# Running jobs: decode and encode in threads around the model


@dataclass
class _Decoded:
    job: Job
    image: io.Image | None
    seconds: float
    error: str | None = None


def _read(job: Job, max_megapixels: float | None) -> _Decoded:
    started = time.perf_counter()
    assert job.src is not None, "only jobs with an input are read"
    try:
        image = io.read_image(job.src, max_megapixels=max_megapixels)
    except ImageError as exc:
        return _Decoded(job, None, time.perf_counter() - started, str(exc))
    except MemoryError:
        return _Decoded(job, None, time.perf_counter() - started, f"{job.src}: too large to decode in memory")
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one odd file must not stop the run
        return _Decoded(
            job,
            None,
            time.perf_counter() - started,
            f"{job.src}: cannot be decoded ({first_line(exc, with_type=True)})",
        )
    return _Decoded(job, image, time.perf_counter() - started)


def _failed(job: Job, error: str, image: io.Image | None = None) -> RestoreReport:
    return RestoreReport(
        input=str(job.src or job.source),
        output=str(job.dst) if job.dst else None,
        status="failed",
        width=image.width if image else None,
        height=image.height if image else None,
        error=error,
    )


def _report(job: Job, image: io.Image, outcome: Outcome, seconds: float, warnings: list[str]) -> RestoreReport:
    return RestoreReport(
        input=str(job.src),
        output=str(job.dst) if job.dst else None,
        status="ok",
        width=image.width,
        height=image.height,
        degradation=outcome.degradation,
        confidence=outcome.confidence,
        experts=outcome.experts,
        gates=outcome.gates,
        routing=outcome.routing,
        tiles=outcome.tiles,
        tile_size=outcome.tile_size,
        precision=outcome.precision,
        seconds=seconds,
        warnings=image.warnings + outcome.warnings + warnings,
    )


def _write(job: Job, image: io.Image, outcome: Outcome, read_seconds: float, options: RestoreOptions) -> RestoreReport:
    started = time.perf_counter()
    assert job.dst is not None, "only jobs with an output are written"
    try:
        notes = io.write_image(
            job.dst,
            image,
            outcome.rgb,
            options.format,
            quality=options.quality,
            overwrite=options.overwrite,
            samples=outcome.samples,
        )
    except ImageError as exc:
        return _failed(job, str(exc), image)
    except Exception as exc:  # noqa: BLE001 - an encoder failure fails this image only
        return _failed(job, f"{job.dst}: cannot be written ({first_line(exc, with_type=True)})", image)
    seconds = read_seconds + outcome.seconds + time.perf_counter() - started
    return _report(job, image, outcome, seconds, notes)


def _model_error(exc: BaseException) -> str:
    return f"model failed ({first_line(exc, with_type=True)})"


def restore_files(
    jobs: Sequence[Job], restorer: Restorer, *, on_written: Callable[[RestoreReport], None] | None = None
) -> Generator[RestoreReport, None, None]:
    """Run the jobs; yields one report per job, in job order, as soon as it and all before it are done.

    Images are decoded ahead by `options.workers` threads and encoded/written by as many, so the model rarely
    waits for files. Consecutive runnable images of one size form batches of up to `options.batch_size`.
    A failure (unreadable file, model error, write error) fails that job only. Interrupting the iteration
    cancels the reads and restorations not yet done; every image already restored is still written, atomically, so
    no finished output is lost and no partial file is left. `on_written` is called (from a writer thread) with the
    report of every image written, those finished after an interruption included.

    On a CPU the model's threads are shared out as independent workers (`Restorer.cpu_workers`): images that fit a
    whole-image pass are restored side by side, one per worker; an image for the tiled path runs alone, its tiles
    shared out. An interruption waits for the images being restored (one per worker) and writes them.
    """
    with restorer.cpu_workers():
        yield from _FileRun(jobs, restorer, on_written).reports()


_Batch = list[tuple[int, _Decoded]]


class _FileRun:
    """One `restore_files` run: the reader and writer threads, and a slot per job that holds its report (or the
    future of its write) until every job before it is done."""

    def __init__(
        self, jobs: Sequence[Job], restorer: Restorer, on_written: Callable[[RestoreReport], None] | None = None
    ) -> None:
        self.jobs, self.restorer, self.options = jobs, restorer, restorer.options
        self.on_written = on_written
        self.slots: list[RestoreReport | Future | None] = [None] * len(jobs)
        runnable: list[int] = []
        for k, job in enumerate(jobs):
            if job.error or job.skip:
                self.slots[k] = report_unrunnable(job)
            else:
                runnable.append(k)
        self.queue = iter(runnable)
        self.readers = ThreadPoolExecutor(self.options.workers, thread_name_prefix="irtool-read")
        self.writers = ThreadPoolExecutor(self.options.workers, thread_name_prefix="irtool-write")
        self.prefetch = max(2, self.options.batch_size + self.options.workers)
        self.reading: deque[tuple[int, Future]] = deque()
        self.writing: deque[Future] = deque()
        self.write_lock = threading.Lock()  # batches finish on several model workers
        self.next_out = 0
        workers = restorer.model_workers
        #: whole images restored side by side on a CPU; None: in this thread, one batch after another
        self.runners = ThreadPoolExecutor(workers, thread_name_prefix="irtool-model") if workers > 1 else None
        self.running: set[Future] = set()

    def reports(self) -> Iterator[RestoreReport]:
        """Decode, batch, restore and write; yield the reports in job order."""
        try:
            self._top_up()
            batch: _Batch = []
            while self.reading or batch:
                item = self._next_decoded()
                if item is not None:
                    if batch and not self._joins(batch, item[1]):
                        self._start_batch(batch)
                        batch = []
                    batch.append(item)
                if batch and (not self.reading or self._full(batch)):
                    self._start_batch(batch)
                    batch = []
                yield from self._ready()
            self._wait_running(0)
            for future in list(self.writing):
                future.result()
            yield from self._ready()
        finally:
            self.readers.shutdown(wait=True, cancel_futures=True)
            if self.runners is not None:  # the images being restored finish and are written below
                self.runners.shutdown(wait=True, cancel_futures=True)
            # an image restored before an interruption is still written (atomically): finished work is never lost,
            # however busy the writer threads were when it came
            self.writers.shutdown(wait=True, cancel_futures=False)

    def _top_up(self) -> None:
        while len(self.reading) < self.prefetch:
            k = next(self.queue, None)
            if k is None:
                return
            self.reading.append((k, self.readers.submit(_read, self.jobs[k], self.options.max_megapixels)))

    def _next_decoded(self) -> tuple[int, _Decoded] | None:
        """The next decoded image in job order, or None (nothing read yet, or it failed: its slot has the report)."""
        if not self.reading:
            return None
        k, future = self.reading.popleft()
        decoded: _Decoded = future.result()
        self._top_up()
        if decoded.image is None:
            self.slots[k] = _failed(decoded.job, decoded.error or "unreadable")
            return None
        return k, decoded

    def _image(self, decoded: _Decoded) -> io.Image:
        assert decoded.image is not None  # only decoded images are batched
        return decoded.image

    def _full(self, batch: _Batch) -> bool:
        """A batch runs now when it is as large as allowed, or holds an image restored alone from its samples."""
        return len(batch) >= self.options.batch_size or self.restorer.needs_tiled_samples(self._image(batch[0][1]))

    def _joins(self, batch: _Batch, decoded: _Decoded) -> bool:
        """Whether an image can join a batch: the same size, room left, and not one for the tiled-samples path."""
        image, first = self._image(decoded), self._image(batch[0][1])
        return (
            not self.restorer.needs_tiled_samples(image)
            and (image.height, image.width) == (first.height, first.width)
            and len(batch) < self.options.batch_size
        )

    def _ready(self) -> Iterator[RestoreReport]:
        """The reports that are done, from the first not yet yielded, in job order."""
        while self.next_out < len(self.slots):
            slot = self.slots[self.next_out]
            if isinstance(slot, Future):
                if not slot.done():
                    return
                slot = slot.result()
            if slot is None:
                return
            self.slots[self.next_out] = None
            self.next_out += 1
            yield slot

    def _start_batch(self, batch: _Batch) -> None:
        """Restore a batch here, or on a free model worker (waiting for one); an image for the tiled path waits for
        the others and runs here, its tiles on the workers."""
        if self.runners is None:
            self._run_batch(batch)
        elif len(batch) == 1 and self.restorer.needs_tiled_samples(self._image(batch[0][1])):
            self._wait_running(0)
            self._run_batch(batch)
        else:
            self._wait_running(self.restorer.model_workers - 1)
            self.running.add(self.runners.submit(self._run_batch, batch))

    def _wait_running(self, at_most: int) -> None:
        """Wait until at most `at_most` batches are being restored on the workers."""
        while len(self.running) > at_most:
            done, self.running = wait(self.running, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # _run_batch reports failures in the slots; anything else is a bug: raise it

    def _run_batch(self, batch: _Batch) -> None:
        """Restore a batch and queue its writes; a failure is retried image by image to find the culprit."""
        try:
            if len(batch) == 1 and self.restorer.needs_tiled_samples(self._image(batch[0][1])):
                outcomes = [self.restorer.restore_large(self._image(batch[0][1]))]
            else:
                outcomes = self.restorer.restore([self._image(d) for _, d in batch])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the run
            if len(batch) > 1:
                for item in batch:  # isolate the culprit
                    self._run_batch([item])
                return
            k, decoded = batch[0]
            error = str(exc) if isinstance(exc, IrtoolError) else _model_error(exc)
            src = str(decoded.job.src)
            self.slots[k] = _failed(decoded.job, error if error.startswith(src) else f"{src}: {error}", decoded.image)
            return
        for (k, decoded), outcome in zip(batch, outcomes):
            with self.write_lock:
                while len(self.writing) > 2 * self.options.workers + self.options.batch_size:  # bound pending writes
                    self.writing.popleft().result()
                future = self.writers.submit(
                    _write, decoded.job, self._image(decoded), outcome, decoded.seconds, self.options
                )
                if self.on_written is not None:
                    future.add_done_callback(self._written)
                self.writing.append(future)
                self.slots[k] = future

    def _written(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is None and future.result().ok:
            assert self.on_written is not None
            self.on_written(future.result())


# --------------------------------------------------------------------------------------------------------------------
# The Python API


@dataclass
class Restored:
    """One result of `restore`: the restored array (None when it was written to a file instead) and its report."""

    image: np.ndarray | None
    report: RestoreReport


def restore(
    inputs: Any,
    output_dir: str | Path | None = None,
    *,
    model: str | Path | nn.Module | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
    precision: str | None = None,
    tile: int | None = None,
    options: RestoreOptions | None = None,
    **more: Any,
) -> list[Restored]:
    """Restore images with an all-in-one model.

    inputs: a path (file, folder, glob), an array, or a list of them. Arrays are (H, W) gray, (H, W, 3) RGB or
        (H, W, 4) RGBA, uint8/uint16 or float in [0, 1].
    output_dir: write results there (as `irtool restore` does, same naming rules) and return reports only;
        without it, results come back as arrays in each input's own layout and dtype, and nothing is written.
    model: a manifest name, a checkpoint path, or an already loaded model (e.g. from `irtool.load_model`);
        weights: a checkpoint path. With neither, the default model (see `default_source`).
    device, precision, tile and any other `RestoreOptions` field (tile_overlap, route_per_tile, batch_size, suffix,
        format, overwrite, skip_existing, route_size, calibration, ...) override `options`.

    Returns one `Restored` per image, in input order; a failed image is a report with status "failed", not an
    exception (bad options and a missing model do raise IrtoolError).

        >>> results = irtool.restore("rainy.jpg", model="moce_ir.aio5")
        >>> results[0].report.degradation, results[0].image.shape
    """
    loaded = model if isinstance(model, nn.Module) else None
    given: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "tile": tile,
        "weights": None if weights is None else str(weights),
    }
    if model is not None and loaded is None:
        given["model"] = str(model)
    unknown = set(more) - set(RestoreOptions.__dataclass_fields__)
    if unknown:
        raise IrtoolError(f"restore() got unknown option(s): {', '.join(sorted(unknown))}")
    settings = replace(options or RestoreOptions(), **{k: v for k, v in given.items() if v is not None}, **more)
    restorer = Restorer(loaded, settings) if loaded is not None else Restorer.load(settings)

    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if output_dir is not None:
        if any(isinstance(x, np.ndarray) for x in items):
            raise IrtoolError("restore(..., output_dir=...) takes paths; restore arrays without output_dir")
        return [Restored(None, r) for r in restore_files(plan([str(x) for x in items], output_dir, settings), restorer)]

    results: list[Restored] = []
    for n, item in enumerate(items):
        if isinstance(item, np.ndarray):
            results.append(_restore_in_memory(restorer, f"<array {n}>", io.from_array(item)))
            continue
        found, failed = expand_inputs([str(item)])
        results += [Restored(None, _failed(job, job.error or "no input")) for job in failed]
        for source, src, _ in found:
            decoded = _read(Job(source, src, None), settings.max_megapixels)
            if decoded.image is None:
                results.append(Restored(None, _failed(decoded.job, decoded.error or "unreadable")))
            else:
                results.append(_restore_in_memory(restorer, str(src), decoded.image))
    return results


def _restore_in_memory(restorer: Restorer, name: str, image: io.Image) -> Restored:
    job = Job(name, Path(name), None)
    try:
        outcome = restorer.restore_large(image) if restorer.needs_tiled_samples(image) else restorer.restore([image])[0]
    except Exception as exc:  # noqa: BLE001 - a failure is reported, not raised, as for files
        error = str(exc) if isinstance(exc, IrtoolError) else _model_error(exc)
        return Restored(None, _failed(job, f"{name}: {error}", image))
    return Restored(
        io.to_array(image, outcome.rgb, samples=outcome.samples), _report(job, image, outcome, outcome.seconds, [])
    )
