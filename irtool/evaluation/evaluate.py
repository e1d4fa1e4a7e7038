"""`irtool eval`: a model on benchmark datasets, scored as the papers scored it, with reports worth reading.

    targets = evaluate.resolve(datasets.expand(["rain100l", "cbsd68"]))      # finds files; fails listing what is missing
    options = evaluate.EvalOptions()                                        # protocol, precision, noise stream, ...
    report = evaluate.new_report(model, options, source="last.ckpt", device="cuda",
                                 reported_from="moce_ir.aio3", reported=evaluate.reported_figures(entry.data))
    for dataset_report, image_result in evaluate.run(model, targets, options, report):
        ...                                                                 # progress; `report` fills as it goes
    evaluate.write_json(report, "eval.json"); evaluate.write_csv(report, "eval.csv")

Each image runs alone (batch 1, full resolution, centre-cropped to 16 for the RGB protocols, as the official test
scripts do) through `model.run` in eval mode under `torch.inference_mode()`; the output is clamped to [0, 1] and
scored by `irtool.evaluation.metrics` on the model's device. The report keeps, per dataset, the per-image scores, the mean,
the paper's figure for the checkpoint (from the manifest), the protocol and every departure from it (tiling,
reduced precision, a subset of images), the realisation of the test noise, and how often the router picked each
expert in each layer (or each class, for classifier-routed models).

Imports torch, numpy, irtool.evaluation.metrics and .datasets, irtool.images (pixels, tensors, files) and
irtool.devices.policy.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..archs.spec import spec_of
from ..devices.policy import EXPLICIT_PRECISIONS, autocast, check_precision, precision_name, resolve_precision
from ..errors import IrtoolError
from ..images import pixels
from ..images.files import write_bytes_atomic
from ..images.tensors import channels_first, from_tensor, to_tensor
from ..restoration.tiling import run_padded
from . import datasets as ds
from . import metrics

if TYPE_CHECKING:
    from ..restoration.engine import Restorer


#: --precision: the names that say what runs (irtool.devices.policy decides what each means on a device)
PRECISIONS = EXPLICIT_PRECISIONS
NOISE_STREAMS = ("shared", "fresh")
#: --save-format: how restored images are written. The protocols score the float output, so only a float32 TIFF
#: lets the figures be recomputed exactly from the files; a 16-bit PNG is within about 1e-5 dB, an 8-bit PNG (for
#: looking at) up to about 1e-3 dB off.
SAVE_FORMATS = {
    "png8": ("png", "8-bit PNG: for viewing; scores recomputed from it differ by up to ~1e-3 dB"),
    "png16": ("png", "16-bit PNG: lossless to 1/65535; scores recomputed from it agree to ~1e-5 dB"),
    "tiff": ("tif", "float32 TIFF: the exact float output; scores recomputed from it are the report's"),
}


@dataclass
class EvalOptions:
    protocol: str | None = None  #: None: each dataset's own protocol
    crop_border: int = 0  #: border dropped before the metrics (Y protocols)
    precision: str = "fp32"
    tile: int = 0  #: tile size in px (0: whole image, as the papers do)
    routing_noise: bool = False  #: MoCE-IR: the official test's router-logit noise, seeded 0 once per run
    noise_stream: str = "shared"  #: "shared": one seed-0 stream for all noise sets in the call; "fresh": reseed each
    limit: int | None = None  #: only the first N images of each dataset
    save_images: Path | None = None
    save_format: str = "png8"  #: one of SAVE_FORMATS: how --save-images writes the restored images
    save_inputs: Path | None = None

    def check(self) -> None:
        if self.save_format not in SAVE_FORMATS:
            raise IrtoolError(f"--save-format {self.save_format}: one of {', '.join(SAVE_FORMATS)}")


@dataclass
class ImageResult:
    file: str
    psnr: float | None = None
    ssim: float | None = None
    #: the degraded input scored against the ground truth the same way: the baseline the model must beat
    input_psnr: float | None = None
    input_ssim: float | None = None
    seconds: float | None = None  #: the network's time for this image (CUDA synchronised)
    height: int | None = None
    width: int | None = None
    experts: list[list[int]] | None = None  #: (layers, k) experts the router chose
    degradation: str | None = None  #: the classifier's class, for classifier-routed models
    error: str | None = None
    notes: list[str] = field(default_factory=list)  #: e.g. how the engine tiled it


@dataclass
class DatasetReport:
    dataset: str
    title: str
    task: str
    protocol: str
    reproduces: str
    crop_multiple: int | None
    crop_border: int
    layout: str | None
    root: str | None
    expected: int | None
    reported: dict[str, float] | None = None  #: the paper's figures for this checkpoint
    noise: dict[str, Any] | None = None  #: how the test noise was drawn
    synthetic: dict[str, Any] | None = None  #: how irtool.degrade made the inputs (synthetic: sets)
    departures: list[str] = field(default_factory=list)  #: where this run differs from the official protocol
    warnings: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None  #: expert (or class) counts
    seconds: float = 0.0  #: wall time for the whole dataset
    images: list[ImageResult] = field(default_factory=list)

    @property
    def scored(self) -> list[ImageResult]:
        return [r for r in self.images if r.error is None and r.psnr is not None]

    @property
    def failed(self) -> int:
        return sum(r.error is not None for r in self.images)

    @property
    def psnr(self) -> float | None:
        scored = self.scored
        return float(np.mean([r.psnr for r in scored])) if scored else None

    @property
    def ssim(self) -> float | None:
        scored = self.scored
        return float(np.mean([r.ssim for r in scored])) if scored else None

    @property
    def input_psnr(self) -> float | None:
        values = [r.input_psnr for r in self.scored if r.input_psnr is not None]
        return float(np.mean(values)) if values else None

    @property
    def input_ssim(self) -> float | None:
        values = [r.input_ssim for r in self.scored if r.input_ssim is not None]
        return float(np.mean(values)) if values else None

    @property
    def delta_psnr(self) -> float | None:
        return _delta(self.psnr, self.reported, "psnr")

    @property
    def delta_ssim(self) -> float | None:
        return _delta(self.ssim, self.reported, "ssim")

    @property
    def worst(self) -> ImageResult | None:
        scored = self.scored
        return min(scored, key=lambda r: math.inf if r.psnr is None else r.psnr) if scored else None

    def summary(self) -> dict[str, Any]:
        seconds = [r.seconds for r in self.scored if r.seconds is not None]
        return {
            "n": len(self.scored),
            "failed": self.failed,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "input_psnr": self.input_psnr,
            "input_ssim": self.input_ssim,
            "delta_psnr": self.delta_psnr,
            "delta_ssim": self.delta_ssim,
            "seconds_per_image": float(np.mean(seconds)) if seconds else None,
        }


def _delta(value: float | None, reported: dict[str, float] | None, key: str) -> float | None:
    if value is None or not reported or reported.get(key) is None or not math.isfinite(value):
        return None
    return value - reported[key]


@dataclass
class EvalReport:
    model: dict[str, Any]
    device: str
    precision: str
    options: dict[str, Any]
    reported_from: str | None = None  #: manifest entry the paper's figures come from
    reported: dict[str, dict[str, float]] = field(default_factory=dict)  #: {dataset: {psnr, ssim}} from that entry
    datasets: list[DatasetReport] = field(default_factory=list)
    #: where --save-images wrote the restored images, in which format, and what that format keeps
    saved_images: dict[str, str] | None = None
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    complete: bool = False
    irtool: str = __version__
    torch: str = torch.__version__

    @property
    def average(self) -> dict[str, Any] | None:
        """Mean over datasets of the per-dataset means (the papers' "Average" column), and the paper's one when the
        datasets are exactly those the paper averaged."""
        done = [d for d in self.datasets if d.psnr is not None]
        if len(done) < 2:
            return None
        psnr = float(np.mean([d.psnr for d in done]))
        ssim = float(np.mean([d.ssim for d in done]))
        out: dict[str, Any] = {"datasets": [d.dataset for d in done], "psnr": psnr, "ssim": ssim, "reported": None}
        if all(d.input_psnr is not None for d in done):
            out["input_psnr"] = float(np.mean([d.input_psnr for d in done]))
            out["input_ssim"] = float(np.mean([d.input_ssim for d in done]))
        ref = self.reported.get("average")
        averaged = sorted(k for k in self.reported if k != "average")
        same_protocols = all(d.reported is not None for d in done)
        if ref and same_protocols and averaged == sorted(out["datasets"]):
            out["reported"] = {"psnr": ref["psnr"], "ssim": ref["ssim"]}
            out["delta_psnr"] = psnr - ref["psnr"]
            out["delta_ssim"] = ssim - ref["ssim"]
        return out

    def to_dict(self) -> dict[str, Any]:
        datasets = []
        for d in self.datasets:
            item = asdict(d)
            item["summary"] = d.summary()
            datasets.append(item)
        return _finite(
            {
                "irtool": self.irtool,
                "torch": self.torch,
                "started": self.started,
                "complete": self.complete,
                "model": self.model,
                "device": self.device,
                "precision": self.precision,
                "options": self.options,
                "reported_from": self.reported_from,
                "reported": self.reported,
                "average": self.average,
                "saved_images": self.saved_images,
                "datasets": datasets,
            }
        )


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: infinite PSNR (identical images) becomes the string "inf", NaN null."""
    from ..finite_json import finite

    return finite(obj, infinity="inf")


def resolve(
    names: list[str], data_root: str | Path | None = None, clean_dir: str | Path | None = None
) -> list[ds.Located]:
    """Find every dataset before any model is loaded; one error lists all that are missing."""
    found, missing, tasks = [], [], []
    for name in names:
        try:
            if name.startswith("synthetic:"):
                found.append(ds.locate_synthetic(name, clean_dir))
            else:
                spec = ds.get_spec(name)
                tasks.append(spec.task)
                found.append(ds.locate(spec, data_root))
        except ds.DatasetError as exc:
            missing.append(str(exc))
    if missing:
        hint = f" | {ds.synthetic_hint(tasks)}" if tasks else ""
        if len(missing) == 1:
            raise ds.DatasetError(missing[0] + hint)
        raise ds.DatasetError(f"{len(missing)} datasets missing: " + " | ".join(missing) + hint)
    return found


def reported_figures(entry_data: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """The manifest entry's `reported` block ({dataset: {psnr, ssim}}), or {}."""
    return dict((entry_data or {}).get("reported") or {})


def new_report(
    model: nn.Module,
    options: EvalOptions,
    *,
    source: str,
    device: torch.device | str,
    reported_from: str | None = None,
    reported: dict[str, dict[str, float]] | None = None,
) -> EvalReport:
    options.check()
    info = {"source": source, **spec_of(model).describe(model)}
    return EvalReport(
        model=info,
        device=str(device),
        precision=options.precision,
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        reported_from=reported_from,
        reported=dict(reported or {}),
        saved_images=None
        if options.save_images is None
        else {
            "folder": str(options.save_images),
            "format": options.save_format,
            "keeps": SAVE_FORMATS[options.save_format][1],
        },
    )


# --------------------------------------------------------------------------------------------------------------------
# Running


def _to_input(lq: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] on `device`, scaled as torchvision's ToTensor scales (uint8 -> float32 / 255)."""
    return to_tensor(lq[None], device)


class _Usage:
    """Counts what the router chose: experts per layer (MoCE-IR) or classes (classifier-routed models)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        caps = spec_of(model).capabilities
        self.classifier = caps.classifier
        #: per-layer routing: the layer names and how many experts each chooses from
        self.per_layer = caps.routing is not None and caps.routing.per_layer
        self.layers: list[str] | None = caps.routing.layer_names(model) if caps.routing and self.per_layer else None
        self.num_experts: int | None = caps.routing.num_experts(model) if caps.routing and self.per_layer else None
        self.counts: np.ndarray | None = None
        self.classes: dict[str, int] = {}

    def add(self, routing: Any, result: ImageResult) -> None:
        # Written against the spec, not one network: a classifier router (LoRA-IR) names a class per image (its
        # experts are per image, not per layer); per-layer routing counts `routing.experts` (B, layers, k).
        if self.classifier is not None:
            self.record(None, self.classifier.classify(self.model, routing)[0][0], result)
            return
        if self.per_layer:
            self.record(routing.experts[0].detach().cpu().tolist(), None, result)

    def record(self, experts: list[list[int]] | None, degradation: str | None, result: ImageResult) -> None:
        """Count one image: its (layers, k) experts, or its class."""
        if degradation is not None:
            result.degradation = degradation
            self.classes[degradation] = self.classes.get(degradation, 0) + 1
            return
        if experts:
            chosen = np.asarray(experts, dtype=int)  # (L, k)
            result.experts = chosen.tolist()
            e = self.num_experts or int(chosen.max()) + 1
            if self.counts is None:
                self.counts = np.zeros((chosen.shape[0], e), dtype=np.int64)
            if chosen.max() >= self.counts.shape[1]:
                grown = np.zeros((self.counts.shape[0], int(chosen.max()) + 1), dtype=np.int64)
                grown[:, : self.counts.shape[1]] = self.counts
                self.counts = grown
            for layer, picks in enumerate(chosen):
                for expert in picks:
                    self.counts[layer, expert] += 1

    def to_dict(self) -> dict[str, Any] | None:
        if self.counts is not None:
            layers = (
                self.layers
                if self.layers and len(self.layers) == self.counts.shape[0]
                else [f"layer{i}" for i in range(self.counts.shape[0])]
            )
            return {
                "kind": "experts",
                "layers": layers,
                "num_experts": int(self.counts.shape[1]),
                "counts": self.counts.tolist(),
            }
        if self.classes:
            return {"kind": "classes", "counts": dict(sorted(self.classes.items()))}
        return None


def usage_of(model: nn.Module, results: list[ImageResult]) -> dict[str, Any] | None:
    """Expert (or class) usage counted again from per-image results, in order: what `run` counts as it goes
    (merging the results of several processes)."""
    usage = _Usage(model)
    for result in results:
        if result.experts or result.degradation:
            usage.record(result.experts, result.degradation if not result.experts else None, result)
    return usage.to_dict()


def _folder(dataset: str) -> str:
    """A dataset's output folder name: "synthetic:noise25" -> "synthetic-noise25" (no ':' in file names)."""
    return dataset.replace(":", "-")


def _write_image(path: Path, array: np.ndarray, protected: set[Path], fmt: str = "png") -> None:
    """Write an RGB image (uint8, uint16 or float32 in [0, 1]) atomically through irtool.images.files, never over one of the
    dataset's own files (outputs of an earlier eval run are replaced)."""
    from ..images import files as image_io

    if path.resolve() in protected:
        raise IrtoolError(f"{path}: refusing to overwrite a dataset file; choose another output folder")
    image_io.write_image(path, image_io.from_array(array), fmt=fmt, overwrite=True)


def _saved(restored: torch.Tensor, save_format: str) -> np.ndarray:
    """The (1, 3, H, W) float output in [0, 1] as the (H, W, 3) array --save-format writes."""
    hwc = from_tensor(restored[0])
    return pixels.from_float(hwc, {"tiff": np.float32, "png16": np.uint16}.get(save_format, np.uint8))


def _tiled_restorer(model: nn.Module, options: EvalOptions, device: torch.device) -> Any:
    """The restore engine, for --tile: the same tiles, blending and shared routing as `irtool restore`."""
    from ..restoration.engine import Restorer
    from ..restoration.planning import RestoreOptions

    return Restorer(model, RestoreOptions(tile=options.tile, precision=options.precision), device=device)


def _dataset_report(
    located: ds.Located, protocol: metrics.Protocol, options: EvalOptions, reported: dict | None, precision: str
) -> DatasetReport:
    """A dataset's report before its images: protocol, layout, the paper's figure, and every departure (precision:
    what runs, as irtool.devices.policy resolved the option)."""
    spec = located.spec
    crop = protocol.crop_multiple if spec.crop else None
    report = DatasetReport(
        dataset=spec.name,
        title=spec.title,
        task=spec.task,
        protocol=protocol.name,
        reproduces=protocol.reproduces,
        crop_multiple=crop,
        crop_border=options.crop_border if protocol.space == "y" else 0,
        layout=located.layout.name,
        root=str(located.root),
        expected=spec.expected,
        warnings=list(located.warnings),
    )
    if reported is not None:
        if protocol.name == spec.protocol:
            report.reported = dict(reported)
        else:
            report.warnings.append(
                f"the paper's figure ({reported.get('psnr')}/{reported.get('ssim')}) is not shown: it was scored "
                f"with protocol {spec.protocol}, this run uses {protocol.name}"
            )
    if options.limit and options.limit < len(located.pairs):
        note = f"only the first {options.limit} of {len(located.pairs)} images (--limit)"
        if spec.synthesised:
            note += "; the skipped images' noise is still drawn, so these inputs equal the full run's"
        report.departures.append(note)
    if options.tile:
        report.departures.append(
            f"tiled inference ({options.tile} px tiles blended by the restore engine, one routing per image decided on "
            "a downscaled copy): the papers run whole images"
        )
    if precision != "fp32":
        report.departures.append(f"{precision} autocast: the papers run fp32")
    if options.crop_border and protocol.space == "rgb":
        report.warnings.append("--crop-border applies to the Y protocols only; ignored")
    return report


def _check_run(model: nn.Module, options: EvalOptions, device: torch.device) -> tuple[torch.dtype | None, list[str]]:
    """The options' one-line errors before anything runs; the autocast dtype and the notes about it (devices.policy)."""
    check_precision(options.precision, PRECISIONS)
    if options.noise_stream not in NOISE_STREAMS:
        raise IrtoolError(f"--noise-stream {options.noise_stream}: one of {', '.join(NOISE_STREAMS)}")
    if options.routing_noise and not spec_of(model).capabilities.routing_noise:
        raise IrtoolError("--routing-noise: only MoCE-IR's router draws noise")
    if options.routing_noise and options.tile:
        raise IrtoolError("--routing-noise reproduces the official whole-image test; it cannot be combined with --tile")
    return resolve_precision(options.precision, device)


def _noise_record(spec: ds.DatasetSpec, options: EvalOptions, stream: ds.NoiseStream) -> dict[str, Any]:
    """How a noise set's inputs were drawn, for the report (before its images advance the stream)."""
    return {
        "sigma": spec.sigma,
        "seed": 0,
        "stream": options.noise_stream,
        "follows": list(stream.history),
        "recipe": "np.random.seed(0) once; files in sorted order; after the centre crop, "
        "clip(clean + randn(*shape) * sigma, 0, 255).astype(uint8)",
    }


def _synthetic_record(spec: ds.DatasetSpec, kind: str, level: float) -> dict[str, Any]:
    """How a synthetic benchmark's inputs (`kind` at `level`) were made, for the report."""
    return {
        "generator": "irtool.degrade",
        "kind": kind,
        "level": level,
        "seed": "zlib.crc32(f'{kind}:{level:g}:{file name}') per image",
        "photos": spec.source,
        "licence": spec.licence,
    }


def run(
    model: nn.Module,
    targets: list[ds.Located],
    options: EvalOptions,
    report: EvalReport,
    keep: Callable[[str, int], bool] | None = None,
    observer: Any = None,
) -> Iterator[tuple[DatasetReport, ImageResult]]:
    """Evaluate `model` on each located dataset in order, filling `report`; yields after every image.

    The report is usable at any point (e.g. after Ctrl-C): finished images are in it, `complete` turns True at the end.
    `keep(dataset, i)` False leaves a dataset's item i to another process (irtool.distributed_run).
    `observer(dataset, result, sample, restored)`, when given, sees every scored image with its pixels (the sample's
    uint8 input and ground truth, the restored (1, 3, H, W) tensor in [0, 1]): the HTML report keeps a few of them.
    """
    device = next(model.parameters()).device
    amp_dtype, precision_notes = _check_run(model, options, device)
    model.eval()
    restorer = _tiled_restorer(model, options, device) if options.tile else None
    if options.routing_noise:
        # MoCE-IR src/test.py seeds torch once (manual_seed(0)) and its eval router draws from the global generator
        torch.manual_seed(0)
    stream = ds.NoiseStream(0)
    for located in targets:
        spec = located.spec
        protocol = metrics.get_protocol(options.protocol or spec.protocol)
        dreport = _dataset_report(located, protocol, options, report.reported.get(spec.name), precision_name(amp_dtype))
        dreport.warnings += precision_notes
        report.datasets.append(dreport)
        noise = None
        if spec.synthesised:
            if options.noise_stream == "fresh":
                stream = ds.NoiseStream(0)
            noise = stream
            dreport.noise = _noise_record(spec, options, stream)
        if spec.degradation is not None:
            dreport.synthetic = _synthetic_record(spec, *spec.degradation)
        usage = _Usage(model)
        protected = {p.resolve() for pair in located.pairs for p in (pair.gt, pair.lq) if p is not None}
        started = time.perf_counter()
        mine = None if keep is None else (lambda i, name=spec.name: keep(name, i))
        for item in ds.iter_samples(
            located, crop_multiple=dreport.crop_multiple, noise=noise, limit=options.limit, keep=mine
        ):
            if isinstance(item, tuple):
                pair, exc = item
                result = ImageResult(pair.name, error=str(exc))
                dreport.images.append(result)
                yield dreport, result
                continue
            result = _evaluate_sample(
                model, restorer, item, protocol, options, device, amp_dtype, usage, protected, spec.name, observer
            )
            dreport.images.append(result)
            dreport.usage = usage.to_dict()
            yield dreport, result
        dreport.seconds = time.perf_counter() - started
        dreport.usage = usage.to_dict()
    report.complete = True


def _evaluate_sample(
    model: nn.Module,
    restorer: Restorer | None,
    sample: ds.Sample,
    protocol: metrics.Protocol,
    options: EvalOptions,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    usage: _Usage,
    protected: set[Path],
    dataset: str,
    observer: Any = None,
) -> ImageResult:
    h, w = sample.gt.shape[:2]
    result = ImageResult(sample.name, height=h, width=w)
    stem = Path(sample.name).stem
    try:
        if options.save_inputs:
            _write_image(Path(options.save_inputs) / _folder(dataset) / f"{stem}.png", sample.lq, protected)
        if sample.lq.shape != sample.gt.shape:
            raise metrics.MetricError(
                f"input is {sample.lq.shape[1]}x{sample.lq.shape[0]} px but its ground truth {sample.gt_path.name} "
                f"is {w}x{h} px"
            )
        with torch.inference_mode():
            if restorer is not None:
                restored = _restore_tiled(restorer, sample.lq, device, usage, result)
            else:
                x = _to_input(sample.lq, device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                kwargs: dict[str, Any] = {"routing_noise": True} if options.routing_noise else {}
                with autocast(device, amp_dtype):
                    out = run_padded(
                        model, x, **kwargs
                    )  # padded by the spec's rule (the official code's), cropped back
                restored = out.output.float().clamp(0, 1)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                result.seconds = time.perf_counter() - t0
                usage.add(out.routing, result)
            gt = channels_first(sample.gt).to(device)  # uint8 kept: the protocols quantize it their own way
            border = options.crop_border if protocol.space == "y" else 0
            result.psnr, result.ssim = metrics.psnr_ssim(restored, gt, protocol, crop_border=border)
            result.input_psnr, result.input_ssim = metrics.psnr_ssim(
                _to_input(sample.lq, device), gt, protocol, crop_border=border
            )
        if options.save_images:
            fmt, _ = SAVE_FORMATS[options.save_format]
            _write_image(
                Path(options.save_images) / _folder(dataset) / f"{stem}.{fmt}",
                _saved(restored, options.save_format),
                protected,
                fmt="tiff" if fmt == "tif" else fmt,
            )
        if observer is not None:
            observer(dataset, result, sample, restored)
    except IrtoolError as exc:
        result.error = f"{sample.name}: {exc}" if not str(exc).startswith(sample.name) else str(exc)
    except torch.OutOfMemoryError:
        result.error = f"{sample.name}: out of memory at {w}x{h} px; try --tile 512 or --precision bf16"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _restore_tiled(
    restorer: Restorer, lq: np.ndarray, device: torch.device, usage: _Usage, result: ImageResult
) -> torch.Tensor:
    """(1, 3, H, W) restored by the engine in tiles; records its time, routing summary and warnings."""
    from ..images import files as image_io

    outcome = restorer.restore([image_io.from_array(lq)])[0]
    result.seconds = outcome.seconds
    usage.record(outcome.experts, outcome.degradation if usage.classifier is not None else None, result)
    result.notes = [f"{outcome.tiles} tiles of {outcome.tile_size} px" if outcome.tile_size else "whole image"] + list(
        outcome.warnings
    )
    assert outcome.rgb is not None  # Restorer.restore gives float RGB (only restore_large gives samples)
    return to_tensor(outcome.rgb[None], device)


# --------------------------------------------------------------------------------------------------------------------
# Writers


def _atomic_text(path: str | Path, text: str) -> None:
    """Write a report file atomically (irtool.images.files' writer); a failure is one IrtoolError line."""
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True, error=IrtoolError)


def to_json(report: EvalReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


def write_json(report: EvalReport, path: str | Path) -> None:
    _atomic_text(path, to_json(report) + "\n")


CSV_COLUMNS = (
    "protocol", "dataset", "file", "psnr", "ssim", "input_psnr", "input_ssim", "seconds", "height", "width", "experts",
    "degradation", "error",
)  # fmt: skip


def _format_experts(experts: list[list[int]] | None) -> str:
    """Experts per layer, layers separated by ';', top-k choices by '+': "2;0;1+3"."""
    if not experts:
        return ""
    return ";".join("+".join(str(e) for e in layer) for layer in experts)


def to_json_many(reports: list[EvalReport]) -> str:
    """Several models' reports (`irtool eval --model a --model b`): a JSON list of reports, in model order."""
    return json.dumps([r.to_dict() for r in reports], indent=2, allow_nan=False)


def to_csv(report: EvalReport, model: str | None = None, header: bool = True) -> str:
    """Per-image scores; with `model`, a first column names the model (several models in one file)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow((("model",) if model is not None else ()) + CSV_COLUMNS)
    for d in report.datasets:
        for r in d.images:
            writer.writerow(
                ([model] if model is not None else [])
                + [
                    d.protocol,
                    d.dataset,
                    r.file,
                    "" if r.psnr is None else (f"{r.psnr:.6f}" if math.isfinite(r.psnr) else "inf"),
                    "" if r.ssim is None else f"{r.ssim:.8f}",
                    "" if r.input_psnr is None else (f"{r.input_psnr:.6f}" if math.isfinite(r.input_psnr) else "inf"),
                    "" if r.input_ssim is None else f"{r.input_ssim:.8f}",
                    "" if r.seconds is None else f"{r.seconds:.6f}",
                    r.height or "",
                    r.width or "",
                    _format_experts(r.experts),
                    r.degradation or "",
                    r.error or "",
                ]
            )
    return buf.getvalue()


def write_csv(report: EvalReport, path: str | Path) -> None:
    _atomic_text(path, to_csv(report))


def write_many(
    reports: list[EvalReport], labels: list[str], json_path: str | Path | None, csv_path: str | Path | None
) -> None:
    """Several models' reports in one JSON (a list) and one CSV (with a model column)."""
    if json_path:
        _atomic_text(json_path, to_json_many(reports) + "\n")
    if csv_path:
        _atomic_text(
            csv_path, "".join(to_csv(r, label, header=n == 0) for n, (r, label) in enumerate(zip(reports, labels)))
        )


def plot_usage(report: EvalReport, path: str | Path) -> Path:
    """A PNG of expert usage: per dataset, per MoCE layer, the share of images routed to each expert."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise IrtoolError("--plot needs matplotlib: pip install 'irtool[plot]'") from None
    panels = [d for d in report.datasets if d.usage]
    if not panels:
        raise IrtoolError("--plot: no routing was recorded (no image was evaluated)")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels) + 0.6), squeeze=False)
    for ax, d in zip(axes[:, 0], panels):
        usage = d.usage or {}
        if usage["kind"] == "experts":
            counts = np.asarray(usage["counts"], dtype=float)
            shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            bottom = np.zeros(counts.shape[0])
            for e in range(counts.shape[1]):
                ax.bar(range(counts.shape[0]), shares[:, e], bottom=bottom, label=f"expert {e}")
                bottom += shares[:, e]
            ax.set_xticks(range(counts.shape[0]))
            ax.set_xticklabels([str(i) for i in range(counts.shape[0])])
            ax.set_ylabel("share of images")
        else:
            names = list(usage["counts"])
            ax.bar(names, [usage["counts"][n] for n in names])
            ax.set_ylabel("images")
        ax.set_title(f"{d.title} ({len(d.images)} images)", fontsize=10)
    if (panels[-1].usage or {}).get("kind") == "experts":
        axes[-1, 0].set_xlabel("MoCE layer (forward order)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    picture = io.BytesIO()
    try:
        fig.savefig(picture, dpi=110, format="png")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, picture.getbuffer(), overwrite=True, error=IrtoolError)
    return path
