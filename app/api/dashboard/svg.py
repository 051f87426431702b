"""Server-rendered SVG charts (no JavaScript, no CDN): stacked bars over time, and p50/p95
bars per task. Every label is escaped; sizes are fixed so a page's bytes stay bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

OK, FAILED, OTHER = "#2f9e44", "#e03131", "#adb5bd"


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def stacked_bars(
    points: Sequence[dict[str, Any]], *, label_format: str, width: int = 720, height: int = 140
) -> Markup:
    """One bar per bucket: succeeded (green) under failed (red) under other (grey)."""
    left, bottom, top = 34, 18, 8
    plot_w, plot_h = width - left - 4, height - bottom - top
    peak = max([p["ok"] + p["failed"] + p["other"] for p in points] + [1])
    slot = plot_w / max(1, len(points))
    bar = max(1.0, slot * 0.8)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img">',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="axis">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="axis">0</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}" '
        'class="base"/>',
    ]
    for i, p in enumerate(points):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        tip = escape(
            f"{p['at'].strftime(label_format)}: {p['ok']} succeeded, {p['failed']} failed, "
            f"{p['other']} other"
        )
        parts.append(f"<g><title>{tip}</title>")
        for key, color in (("ok", OK), ("failed", FAILED), ("other", OTHER)):
            h = plot_h * p[key] / peak
            if h > 0:
                y -= h
                parts.append(
                    f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(bar)}" height="{_n(h)}" '
                    f'fill="{color}"/>'
                )
        parts.append("</g>")
    ends = ((0, "start"), (len(points) // 2, "middle"), (len(points) - 1, "end"))
    for i, anchor in ends if points else ():
        x = left + i * slot + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
        label = escape(points[i]["at"].strftime(label_format))
        parts.append(
            f'<text x="{_n(x)}" y="{height - 4}" text-anchor="{anchor}" class="axis">{label}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def p50_p95(p50: float | None, p95: float | None, scale: float, *, width: int = 220) -> Markup:
    """A small bar: p50 (dark) inside p95 (light), both scaled to `scale` seconds."""
    if p50 is None or p95 is None or scale <= 0:
        return Markup("")
    w95 = max(1.0, width * min(1.0, p95 / scale))
    w50 = max(1.0, width * min(1.0, p50 / scale))
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{width}" height="12" '
        f'viewBox="0 0 {width} 12"><rect width="{_n(w95)}" height="12" fill="#a5d8ff"/>'
        f'<rect width="{_n(w50)}" height="12" fill="#1971c2"/></svg>'
    )


def seconds(value: float | None) -> str:
    """1.2 ms / 340 ms / 2.5 s / 3.1 min / 2.0 h."""
    if value is None:
        return "—"
    if value == 0:
        return "0 s"
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
