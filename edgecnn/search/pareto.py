"""The trade-off: top-1 vs measured batch-1 latency, its Pareto front, and a plot (SVG, no plotting library)."""

from __future__ import annotations

import math
from html import escape
from typing import Optional

KIND_STYLE = {  # marker colour per kind of point
    "fp32": "#222222",
    "uniform": "#1f77b4",
    "candidate": "#9e9e9e",
    "rejected": "#d62728",
    "chosen": "#2ca02c",
}


def front(points: list[dict]) -> list[dict]:
    """Points not dominated in (lower ``ms``, higher ``top1``); sorted by latency."""
    usable = [p for p in points if p.get("ms") is not None and p.get("top1") is not None]
    out = []
    for p in sorted(usable, key=lambda p: (p["ms"], -p["top1"])):
        if not out or p["top1"] > out[-1]["top1"]:
            out.append(p)
    return out


def _scale(values, low: float, high: float):
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    pad = span * 0.08
    lo, hi = lo - pad, hi + pad
    return (lambda v: low + (v - lo) / (hi - lo) * (high - low)), lo, hi


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks on round values (a step of 1, 2, 2.5 or 5 times a power of ten) inside [low, high]."""
    span = (high - low) or abs(high) or 1.0
    raw = span / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0)
    return f"{value:.{decimals}f}"


def svg(points: list[dict], title: str, width: int = 640, height: int = 420) -> str:
    """A scatter of every point (label, colour by kind) with the front drawn as a line."""
    usable = [p for p in points if p.get("ms") is not None and p.get("top1") is not None]
    if not usable:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60"><text x="10" y="30">{escape(title)}: no points</text></svg>'
    left, right, top, bottom = 70, width - 20, 40, height - 50
    sx, xlo, xhi = _scale([p["ms"] for p in usable], left, right)
    sy, ylo, yhi = _scale([p["top1"] for p in usable], bottom, top)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{top}" stroke="black"/>',
             f'<text x="{(left + right) / 2}" y="{height - 12}" text-anchor="middle">batch-1 latency (ms, measured; the timing the choice was made with)</text>',
             f'<text x="16" y="{(top + bottom) / 2}" text-anchor="middle" transform="rotate(-90 16 {(top + bottom) / 2})">top-1 (%)</text>']
    xticks, yticks = nice_ticks(xlo, xhi), nice_ticks(ylo, yhi)
    for xv in xticks:
        parts.append(f'<text x="{sx(xv):.1f}" y="{bottom + 16}" text-anchor="middle">{_tick_label(xv, xticks)}</text>')
    for yv in yticks:
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{_tick_label(yv, yticks)}</text>')
    line = " ".join(f"{sx(p['ms']):.1f},{sy(p['top1']):.1f}" for p in front(usable))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#2ca02c" stroke-dasharray="4 3"/>')
    for p in usable:
        colour = KIND_STYLE.get(p.get("kind", "candidate"), "#9e9e9e")
        x, y = sx(p["ms"]), sy(p["top1"])
        radius = 6 if p.get("kind") == "chosen" else 4
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}"/>')
        parts.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}">{escape(str(p.get("label", "")))}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def summary(points: list[dict], chosen_label: Optional[str] = None) -> dict:
    """The report.json section: every point, the front's labels and the chosen point."""
    return {"points": points, "front": [p["label"] for p in front(points)], "chosen": chosen_label,
            "axes": {"x": "batch-1 latency ms (measured on the target)", "y": "top-1 % (evaluation part)"}}
