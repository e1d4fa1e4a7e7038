"""The `irtool eval --report` page (and `irtool report a.json b.json`): one or more eval reports side by side.

The page is built from the reports' JSON form (`EvalReport.to_dict()`), so a live run and report files merged later
give the same page. Pictures come from a `Gallery` that watched the run (`evaluate.run(..., observer=gallery)`): it
keeps, per dataset, the worst and best images by PSNR, and crops of the images every model must show side by side
(those the first model found worst and best, and any `--figure NAME:x,y,w,h`), so nothing is run twice.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import IrtoolError
from . import images, render, svg

#: side of the automatic comparison crop, px
CROP_SIDE = 96


@dataclass(frozen=True)
class FigureSpec:
    """`--figure NAME:x,y,w,h`: a crop of one image (NAME is the file name, or DATASET/FILE) to save as a PNG figure."""

    name: str
    rect: tuple[int, int, int, int]

    @property
    def dataset(self) -> str | None:
        return self.name.split("/", 1)[0] if "/" in self.name else None

    @property
    def file(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name

    def matches(self, dataset: str, file: str) -> bool:
        return file == self.file and self.dataset in (None, dataset)


def parse_figure(text: str) -> FigureSpec:
    """'rain-001.png:10,20,64,64' -> FigureSpec; a one-line IrtoolError saying what is wrong otherwise."""
    match = re.fullmatch(r"(.+):(\d+),(\d+),(\d+),(\d+)", text.strip())
    if not match:
        raise IrtoolError(f"--figure {text}: expected NAME:x,y,w,h (e.g. rain-001.png:40,60,96,96)")
    x, y, w, h = (int(v) for v in match.groups()[1:])
    if w <= 0 or h <= 0:
        raise IrtoolError(f"--figure {text}: the crop needs a positive width and height")
    return FigureSpec(match.group(1), (x, y, w, h))


def _u8(restored: Any) -> np.ndarray:
    """(H, W, 3) uint8 from the restored (1, 3, H, W) tensor in [0, 1], rounded as eval's saved PNGs are."""
    if isinstance(restored, np.ndarray):
        return images.as_uint8(restored)
    from ..images import pixels
    from ..images.tensors import from_tensor

    return pixels.from_float(from_tensor(restored[0]), np.uint8)


@dataclass
class _Kept:
    psnr: float
    result: Any
    lq: np.ndarray | None  #: None when a merged report has no saved input (noise synthesised at test time)
    out: np.ndarray
    gt: np.ndarray


@dataclass
class Gallery:
    """An eval observer keeping what the report shows. `wanted` maps (dataset, file) to the crop every model shows;
    `figures` are crops asked for by name."""

    keep: int = 2
    wanted: dict[tuple[str, str], tuple[int, int, int, int]] = field(default_factory=dict)
    figures: Sequence[FigureSpec] = ()
    crop_side: int = CROP_SIDE
    worst: dict[str, list[tuple[float, int, _Kept]]] = field(default_factory=dict)  # max-heap by psnr (negated)
    best: dict[str, list[tuple[float, int, _Kept]]] = field(default_factory=dict)  # min-heap by psnr
    crops: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _n: int = 0

    def __call__(self, dataset: str, result: Any, sample: Any, restored: Any) -> None:
        if result.psnr is None:
            return
        psnr = float(result.psnr)
        worst, best = self.worst.setdefault(dataset, []), self.best.setdefault(dataset, [])
        key = (dataset, result.file)
        figures = [f for f in self.figures if f.matches(dataset, result.file)]
        keep_worst = len(worst) < self.keep or psnr < -worst[0][0]
        keep_best = len(best) < self.keep or psnr > best[0][0]
        if not (keep_worst or keep_best or key in self.wanted or figures):
            return
        kept = _Kept(psnr, result, sample.lq, _u8(restored), sample.gt)
        self._n += 1
        if keep_worst:
            (heapq.heappush if len(worst) < self.keep else heapq.heapreplace)(worst, (-psnr, self._n, kept))
        if keep_best:
            (heapq.heappush if len(best) < self.keep else heapq.heapreplace)(best, (psnr, self._n, kept))
        if key in self.wanted:
            self._crop(key, self.wanted[key], kept, "auto")
        for spec in figures:
            self._crop(key + (spec.name,), spec.rect, kept, "figure")

    def _crop(self, key: tuple, rect: tuple[int, int, int, int], kept: _Kept, kind: str) -> None:
        h, w = kept.gt.shape[:2]
        inside = images.clip_rect(rect, w, h)
        if inside is None:
            self.crops[key] = {
                "kind": kind,
                "rect": rect,
                "error": f"the crop {rect} lies outside the {w}x{h} px image",
            }
            return
        self.crops[key] = {
            "kind": kind,
            "rect": inside,
            "psnr": kept.result.psnr,
            "input_psnr": kept.result.input_psnr,
            "lq": None if kept.lq is None else images.crop(kept.lq, inside).copy(),
            "out": images.crop(kept.out, inside).copy(),
            "gt": images.crop(kept.gt, inside).copy(),
        }

    def showcase(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Per dataset, the worst and best images (worst first / best first) with previews and error heat-maps."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for dataset in self.worst:
            worst = [k for _, _, k in sorted(self.worst[dataset], key=lambda t: (-t[0], t[1]))]
            best = [k for _, _, k in sorted(self.best[dataset], key=lambda t: (-t[0], t[1]))]
            worst_files = {k.result.file for k in worst}
            best = [k for k in best if k.result.file not in worst_files]  # tiny sets: an image is shown once
            out[dataset] = {"worst": [self._card(k) for k in worst], "best": [self._card(k) for k in best]}
        return out

    @staticmethod
    def _card(kept: _Kept) -> dict[str, Any]:
        r = kept.result
        return {
            "file": r.file,
            "psnr": r.psnr,
            "ssim": r.ssim,
            "input_psnr": r.input_psnr,
            "gain": _gain(r.psnr, r.input_psnr),
            "input": None if kept.lq is None else images.preview_uri(kept.lq, 360),
            "output": images.preview_uri(kept.out, 360),
            "gt": images.preview_uri(kept.gt, 360),
            "heat": images.preview_uri(images.heatmap(kept.out, kept.gt), 360),
        }

    def selection(self) -> dict[tuple[str, str], tuple[int, int, int, int]]:
        """The images the next models must also crop: this model's worst and best, each at the window where this
        model's error is largest. Their crops from this model are recorded too."""
        chosen: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        for dataset, heap in list(self.worst.items()) + list(self.best.items()):
            for _, _, kept in heap:
                key = (dataset, kept.result.file)
                if key in chosen:
                    continue
                rect = self.wanted.get(key) or images.worst_window(kept.out, kept.gt, self.crop_side)
                chosen[key] = rect
                if key not in self.crops:
                    self._crop(key, rect, kept, "auto")
        return chosen


def _gain(psnr: Any, input_psnr: Any) -> float | None:
    if not isinstance(psnr, (int, float)) or not isinstance(input_psnr, (int, float)):
        return None
    if not (np.isfinite(psnr) and np.isfinite(input_psnr)):
        return None
    return float(psnr) - float(input_psnr)


def _number(value: Any) -> Any:
    """JSON's "inf" back to a float, so sorting and formatting treat it as a number."""
    return float("inf") if value == "inf" else value


def label_for(report: dict[str, Any], taken: Sequence[str]) -> str:
    """A short, unique name for a model: its manifest name or checkpoint file name."""
    source = str(report.get("model", {}).get("source", "model"))
    base = Path(source).name or source
    label, n = base, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    return label


def load_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Eval report JSONs (one report each, or a list of reports from `eval --model a --model b`), in order."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise IrtoolError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise IrtoolError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        items = data if isinstance(data, list) else [data]
        for item in items:
            if not isinstance(item, dict) or "datasets" not in item or "model" not in item:
                raise IrtoolError(
                    f"{path}: not an irtool eval report (write one with `irtool eval ... --json-file FILE`)"
                )
            out.append(item)
    if not out:
        raise IrtoolError("no eval reports given")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def build(reports: Sequence[dict[str, Any]], galleries: Sequence[Gallery | None] | None = None) -> dict[str, Any]:
    """The page's context from report dicts (and, for live runs, the galleries that watched them)."""
    galleries = list(galleries or [None] * len(reports))
    labels: list[str] = []
    for r in reports:
        labels.append(label_for(r, labels))
    runs = []
    for label, r in zip(labels, reports):
        model = r.get("model", {})
        runs.append({
            "label": label,
            "source": model.get("source"),
            "arch": model.get("arch"),
            "parameters": model.get("parameters"),
            "device": r.get("device"),
            "precision": r.get("precision"),
            "started": r.get("started"),
            "complete": r.get("complete"),
            "reported_from": r.get("reported_from"),
            "irtool": r.get("irtool"),
            "torch": r.get("torch"),
            "options": r.get("options", {}),
            "average": r.get("average"),
        })  # fmt: skip
    order: list[str] = []
    by_run: list[dict[str, dict[str, Any]]] = []
    for r in reports:
        mapping = {d["dataset"]: d for d in r.get("datasets", [])}
        by_run.append(mapping)
        order += [name for name in mapping if name not in order]
    showcases = [g.showcase() if g else {} for g in galleries]
    table, sections = [], []
    for name in order:
        present = [m.get(name) for m in by_run]
        first = next(d for d in present if d is not None)
        cells: list[dict[str, Any] | None] = []
        for d in present:
            if d is None:
                cells.append(None)
                continue
            s = d.get("summary", {})
            cells.append({
                "n": s.get("n"), "failed": s.get("failed"), "psnr": _number(s.get("psnr")), "ssim": s.get("ssim"),
                "input_psnr": _number(s.get("input_psnr")), "input_ssim": s.get("input_ssim"),
                "reported": d.get("reported"), "delta_psnr": s.get("delta_psnr"), "delta_ssim": s.get("delta_ssim"),
                "seconds": s.get("seconds_per_image"),
            })  # fmt: skip
        section_id = "ds-" + _slug(name)
        table.append(
            {
                "name": name,
                "title": first.get("title"),
                "protocol": first.get("protocol"),
                "cells": cells,
                "id": section_id,
            }
        )
        sections.append(_section(name, section_id, first, present, labels, showcases, galleries))
    averages = [r.get("average") for r in reports]
    return {
        "title": "irtool eval report" if len(reports) == 1 else f"irtool eval report: {len(reports)} models",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "irtool": __version__,
        "runs": runs,
        "labels": labels,
        "table": table,
        "averages": averages if any(averages) else None,
        "sections": sections,
        "heat_range": images.HEAT_RANGE,
        "has_pictures": any(g is not None for g in galleries),
    }


def _section(
    name: str, section_id: str, first: dict, present: list, labels: list[str], showcases: list, galleries: list
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for k, d in enumerate(present):
        for image in (d or {}).get("images", []):
            row = rows.setdefault(
                image["file"],
                {"file": image["file"], "input_psnr": None, "input_ssim": None, "runs": [None] * len(present)},
            )
            if row["input_psnr"] is None:
                row["input_psnr"], row["input_ssim"] = _number(image.get("input_psnr")), image.get("input_ssim")
            psnr = _number(image.get("psnr"))
            row["runs"][k] = {
                "psnr": psnr,
                "ssim": image.get("ssim"),
                "gain": _gain(psnr, _number(image.get("input_psnr"))),
                "seconds": image.get("seconds"),
                "experts": image.get("experts"),
                "degradation": image.get("degradation"),
                "error": image.get("error"),
            }
    notes = []
    if first.get("reproduces"):
        notes.append(f"protocol {first.get('protocol')}: {first.get('reproduces')}")
    if first.get("crop_multiple"):
        notes.append(f"images centre-cropped to a multiple of {first['crop_multiple']} px before scoring")
    if first.get("crop_border"):
        notes.append(f"{first['crop_border']} px border dropped before the metrics")
    noise = first.get("noise")
    if noise:
        follows = ", ".join(noise.get("follows") or []) or "nothing (as if run alone)"
        notes.append(
            f"AWGN σ{noise.get('sigma')}, seed {noise.get('seed')}, {noise.get('stream')} stream after {follows}: {noise.get('recipe')}"
        )
    synthetic = first.get("synthetic")
    if synthetic:
        notes.append(f"inputs made by {synthetic.get('generator')} ({synthetic.get('kind')} {synthetic.get('level')}, seed {synthetic.get('seed')}) "
                     f"from {synthetic.get('photos')} ({synthetic.get('licence')})")  # fmt: skip
    if first.get("root"):
        notes.append(f"data: {first['root']} (layout {first.get('layout')})")
    departures, warnings = [], []
    for label, d in zip(labels, present):
        if d is None:
            continue
        prefix = f"{label}: " if len(labels) > 1 else ""
        departures += [prefix + x for x in d.get("departures", [])]
        warnings += [prefix + x for x in d.get("warnings", [])]
    usage = [(label, svg.usage_chart(d["usage"])) for label, d in zip(labels, present) if d and d.get("usage")]
    showcase = [(label, sc.get(name)) for label, sc in zip(labels, showcases) if sc.get(name)]
    crops = _comparisons(name, present, labels, rows, galleries)
    return {
        "name": name,
        "id": section_id,
        "title": first.get("title"),
        "task": first.get("task"),
        "notes": notes,
        "departures": departures,
        "warnings": warnings,
        "usage": usage,
        "rows": list(rows.values()),
        "showcase": showcase,
        "crops": crops,
    }


def _comparisons(name: str, present: list, labels: list[str], rows: dict, galleries: list) -> list[dict[str, Any]]:
    """The same crop from every model, with each model's PSNR on the whole image: automatic crops, then figures."""
    live = [g for g in galleries if g is not None]
    if not live:
        return []
    keys: list[tuple] = []
    for g in live:
        keys += [k for k in g.crops if k[0] == name and k not in keys]
    out = []
    for key in keys:
        file = key[1]
        first = next((g.crops[key] for g in live if key in g.crops and "gt" in g.crops[key]), None)
        errors = [g.crops[key]["error"] for g in live if key in g.crops and "error" in g.crops[key]]
        if first is None:
            out.append(
                {
                    "file": file,
                    "figure": key[2] if len(key) > 2 else None,
                    "error": errors[0] if errors else "not evaluated",
                }
            )
            continue
        lq = first["lq"]
        panels = [
            {
                "label": "input",
                "uri": None if lq is None else images.data_uri(lq, "png"),
                "caption": _db(first["input_psnr"]) if lq is not None else "input not saved",
            }
        ]
        for label, g in zip(labels, galleries):
            crop = g.crops.get(key) if g is not None else None
            if crop and "out" in crop:
                panels.append(
                    {
                        "label": label,
                        "uri": images.data_uri(crop["out"], "png"),
                        "caption": _db(crop["psnr"]),
                        "array": crop["out"],
                    }
                )
            else:
                panels.append({"label": label, "uri": None, "caption": "not evaluated on this image"})
        panels.append({"label": "ground truth", "uri": images.data_uri(first["gt"], "png"), "caption": ""})
        out.append({
            "file": file, "figure": key[2] if len(key) > 2 else None, "rect": first["rect"], "panels": panels,
            "lq": first["lq"], "gt": first["gt"], "error": None,
        })  # fmt: skip
    return out


def _db(value: Any) -> str:
    if value is None:
        return ""
    value = _number(value)
    return "PSNR ∞" if value == float("inf") else f"PSNR {value:.2f} dB"


def write_figures(context: dict[str, Any], report_path: str | Path) -> list[Path]:
    """Each `--figure` crop as a PNG beside the report: input, every model, ground truth, PSNR under each."""
    report_path = Path(report_path)
    written = []
    for section in context["sections"]:
        for c in section["crops"]:
            if not c.get("figure") or c.get("error"):
                continue
            panels = [] if c["lq"] is None else [(c["lq"], "input", c["panels"][0]["caption"])]
            panels += [(p["array"], p["label"], p["caption"]) for p in c["panels"][1:-1] if p.get("array") is not None]
            panels.append((c["gt"], "ground truth", ""))
            stem = _slug(Path(c["file"]).stem)
            path = report_path.with_name(f"{report_path.stem}.{_slug(section['name'])}.{stem}.png")
            written.append(images.figure(panels, path))
    return written


def replay(
    report: dict[str, Any], *, wanted: dict | None = None, figures: Sequence[FigureSpec] = (), keep: int = 2
) -> Gallery | None:
    """A Gallery for a report read from JSON, from the images its run saved (`eval --save-images`, and
    `--save-inputs` for inputs synthesised at test time) and the ground truths in its data root. None when the run
    saved no images."""
    from types import SimpleNamespace

    from ..evaluation import datasets as ds
    from ..evaluation.evaluate import resolve
    from ..images import files as image_io

    saved = (report.get("options") or {}).get("save_images")
    if not saved:
        return None
    inputs = (report.get("options") or {}).get("save_inputs")
    gallery = Gallery(keep=keep, wanted=dict(wanted or {}), figures=figures)

    def read(path: Path) -> np.ndarray | None:
        try:
            return images.as_uint8(image_io.read_image(path).rgb) if path.exists() else None
        except IrtoolError:
            return None

    for d in report.get("datasets", []):
        name, folder = d["dataset"], d["dataset"].replace(":", "-")
        scored = sorted(
            (i for i in d.get("images", []) if i.get("psnr") is not None and not i.get("error")),
            key=lambda i: _number(i["psnr"]),
        )
        chosen = (
            scored[:keep]
            + scored[-keep:]
            + [
                i
                for i in scored
                if (name, i["file"]) in gallery.wanted or any(f.matches(name, i["file"]) for f in figures)
            ]
        )
        try:
            located = resolve([name], d.get("root"), d.get("root"))[0]
        except IrtoolError:
            continue  # the ground truths are not where the run found them: no pictures for this dataset
        pairs = {p.name: p for p in located.pairs}
        seen = set()
        for image in chosen:
            if image["file"] in seen or image["file"] not in pairs:
                continue
            seen.add(image["file"])
            stem = Path(image["file"]).stem
            out = next(
                (a for a in (read(Path(saved) / folder / f"{stem}.{ext}") for ext in ("png", "tif")) if a is not None),
                None,
            )
            if out is None:
                continue
            pair = pairs[image["file"]]
            gt = ds.centre_crop(ds.read_rgb(pair.gt), d.get("crop_multiple"))
            lq = read(Path(inputs) / folder / f"{stem}.png") if inputs else None
            if lq is None and pair.lq is not None:
                lq = ds.centre_crop(ds.read_rgb(pair.lq), d.get("crop_multiple"))
            result = SimpleNamespace(
                file=image["file"],
                psnr=_number(image["psnr"]),
                ssim=image.get("ssim"),
                input_psnr=_number(image.get("input_psnr")),
            )
            gallery(name, result, SimpleNamespace(lq=lq, gt=gt), out)
    return gallery


def merge(reports: Sequence[dict[str, Any]], figures: Sequence[FigureSpec] = ()) -> list[Gallery | None]:
    """Galleries for reports read from JSON: the first report's worst/best images choose the crops the others show."""
    galleries: list[Gallery | None] = []
    wanted: dict = {}
    for n, report in enumerate(reports):
        gallery = replay(report, wanted=wanted, figures=figures)
        if gallery is not None and n == 0:
            wanted = gallery.selection()
        galleries.append(gallery)
    return galleries


def write_report(
    path: str | Path, reports: Sequence[dict[str, Any]], galleries: Sequence[Gallery | None] | None = None
) -> tuple[Path, list[Path]]:
    """Render and write the eval page; returns it and the PNG figures written beside it."""
    render.environment()
    context = build(reports, galleries)
    figures = write_figures(context, path)
    return render.write(path, render.render("eval.html.j2", context)), figures
