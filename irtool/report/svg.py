"""Inline SVG charts for the reports, built as escaped markup: expert choices and gates per layer for one image, and
expert usage per layer (or classes) over a dataset.

Colours are fixed per expert index so that a reader learns them once per page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

#: one colour per expert index (colour-blind-safe Okabe-Ito order, then greys)
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#999999", "#555555", "#bbbbbb")


def colour(expert: int) -> str:
    return PALETTE[expert % len(PALETTE)]


def _text_colour(expert: int) -> str:
    return (
        "#000" if PALETTE[expert % len(PALETTE)] in ("#e69f00", "#f0e442", "#56b4e9", "#bbbbbb", "#999999") else "#fff"
    )


def routing_grid(
    experts: Sequence[Sequence[int]], gates: Sequence[Sequence[float]] | None, layers: Sequence[str] | None = None
) -> Markup:
    """One image's routing: a column per layer, a row per chosen expert (top-k); the cell shows the expert number
    in its colour, its opacity the gate; hovering names the layer and gives the gate."""
    cell, gap, label_h = 24, 2, 14
    n_layers = len(experts)
    k = max((len(layer) for layer in experts), default=1)
    width = n_layers * (cell + gap)
    height = k * (cell + gap) + label_h
    parts = [f'<svg class="routing" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-label="experts chosen in {n_layers} layers">']  # fmt: skip
    for i, layer in enumerate(experts):
        x = i * (cell + gap)
        name = layers[i] if layers and i < len(layers) else f"layer {i}"
        for j, expert in enumerate(layer):
            gate = gates[i][j] if gates and i < len(gates) and j < len(gates[i]) else None
            opacity = 1.0 if gate is None else 0.35 + 0.65 * max(0.0, min(1.0, float(gate)))
            y = j * (cell + gap)
            tip = f"{name}: expert {expert}" + ("" if gate is None else f", gate {gate:.2f}")
            parts.append(
                f'<g><title>{escape(tip)}</title><rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="3" '
                f'fill="{colour(int(expert))}" fill-opacity="{opacity:.2f}"/>'
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" font-size="12" '
                f'fill="{_text_colour(int(expert))}">{int(expert)}</text></g>'
            )
        parts.append(
            f'<text x="{x + cell / 2}" y="{height - 3}" text-anchor="middle" font-size="9" fill="#666">L{i}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def usage_chart(usage: dict[str, Any]) -> Markup:
    """Expert usage over a dataset: per layer a stacked bar of the share of choices each expert got; or, for a
    classifier-routed model, a bar per class."""
    if usage.get("kind") == "classes":
        return _class_bars(usage["counts"])
    counts = [[int(c) for c in row] for row in usage["counts"]]
    layers = usage.get("layers") or [f"layer{i}" for i in range(len(counts))]
    n_experts = max((len(row) for row in counts), default=0)
    bar, gap, plot_h, top, left, bottom = 26, 6, 150, 10, 40, 34
    width = max(left + len(counts) * (bar + gap) + 10, left + n_experts * 70 + 10)
    height = top + plot_h + bottom + 22
    parts = [f'<svg class="usage" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-label="expert usage in {len(counts)} layers">']  # fmt: skip
    for tick in (0, 0.5, 1):
        y = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left - 4}" x2="{left + len(counts) * (bar + gap)}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="10" fill="#555">{tick:.0%}</text>')  # fmt: skip
    for i, row in enumerate(counts):
        total = sum(row) or 1
        x = left + i * (bar + gap)
        y = top + plot_h
        for expert, count in enumerate(row):
            h = plot_h * count / total
            if h <= 0:
                continue
            y -= h
            tip = f"{layers[i] if i < len(layers) else i}: expert {expert} chosen {count} times ({count / total:.0%})"
            parts.append(
                f'<rect x="{x}" y="{y:.2f}" width="{bar}" height="{h:.2f}" fill="{colour(expert)}"><title>{escape(tip)}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar / 2}" y="{top + plot_h + 14}" text-anchor="middle" font-size="10" fill="#555">L{i}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{top + plot_h + 30}" font-size="10" fill="#555">MoCE layer (forward order); bar: share of choices</text>'
    )
    lx = left
    for expert in range(n_experts):
        parts.append(f'<rect x="{lx}" y="{height - 12}" width="10" height="10" fill="{colour(expert)}"/>'
                     f'<text x="{lx + 13}" y="{height - 3}" font-size="10">expert {expert}</text>')  # fmt: skip
        lx += 70
    parts.append("</svg>")
    return Markup("".join(parts))


def _class_bars(counts: dict[str, int]) -> Markup:
    names = list(counts)
    most = max(counts.values(), default=1) or 1
    row, label_w, bar_w = 20, 110, 260
    height = row * len(names) + 4
    width = label_w + bar_w + 50
    parts = [
        f'<svg class="usage" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-label="images per class">'
    ]
    for i, name in enumerate(names):
        y = i * row
        w = bar_w * counts[name] / most
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="11">{escape(name)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{colour(i)}"/>'
                     f'<text x="{label_w + w + 4}" y="{y + 14}" font-size="11">{int(counts[name])}</text>')  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))
