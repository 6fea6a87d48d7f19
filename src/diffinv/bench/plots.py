"""Loss curves as small self-contained SVG files (no plotting library needed)."""

from __future__ import annotations

from html import escape

PANELS = (("loss_tc", "token consistency L_tc", "#1f77b4"), ("loss_clip", "CLIP delta L_clip", "#d62728"))


def _polyline(values: list[float], x0: float, y0: float, width: float, height: float) -> tuple[str, float, float]:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / max(1, len(values) - 1)
    points = " ".join(
        f"{x0 + i * step:.1f},{y0 + height - (v - low) / span * height:.1f}" for i, v in enumerate(values)
    )
    return points, low, high


def loss_curves_svg(
    history: dict[str, list[float]], title: str = "", width: int = 480, panel_height: int = 110
) -> str:
    """Two panels, L_tc and L_clip against the optimisation step (each on its own scale;
    a loss switched off by an ablation is all zeros and drawn flat)."""
    margin_left, margin_top, gap = 52, 22, 26
    height = margin_top + len(PANELS) * (panel_height + gap)
    plot_width = width - margin_left - 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="10">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="4" y="13" font-size="11">{escape(title)}</text>',
    ]
    for i, (key, label, colour) in enumerate(PANELS):
        values = history.get(key) or [0.0]
        top = margin_top + i * (panel_height + gap) + 12
        points, low, high = _polyline(values, margin_left, top, plot_width, panel_height)
        parts += [
            f'<text x="{margin_left}" y="{top - 3}">{escape(label)} ({len(values)} steps)</text>',
            f'<rect x="{margin_left}" y="{top}" width="{plot_width}" height="{panel_height}" '
            'fill="none" stroke="#ccc"/>',
            f'<text x="2" y="{top + 8}">{high:.4g}</text><text x="2" y="{top + panel_height}">{low:.4g}</text>',
            f'<polyline fill="none" stroke="{colour}" stroke-width="1" points="{points}"/>',
        ]
    parts.append("</svg>")
    return "\n".join(parts)
