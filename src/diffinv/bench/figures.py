"""Figures from a run directory: every method's B′ on the same triplets, side by side.

    python -c "from diffinv.bench.figures import method_comparison; method_comparison('runs/x', 'fig.png')"

Reads only what `diffinv bench run` wrote (results.jsonl and the images), never a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from ..grid import image_grid
from .results import read_results


def first_of_each_family(rows: list[dict], methods: list[str]) -> list[str]:
    """The lowest-index triplet of each family (in order of first appearance) that every method has run."""
    done: dict[str, set[str]] = {}
    for row in rows:
        done.setdefault(row["id"], set()).add(row["method"])
    chosen: dict[str, tuple[int, str]] = {}
    for row in sorted(rows, key=lambda r: r.get("index", 0)):
        family = row.get("family", "")
        if family not in chosen and set(methods) <= done[row["id"]]:
            chosen[family] = (row.get("index", 0), row["id"])
    return [triplet_id for _, triplet_id in chosen.values()]


def method_comparison(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    methods: list[str] | None = None,
    ids: list[str] | None = None,
    height: int = 96,
    labels: dict[str, str] | None = None,
) -> Path:
    """One row per triplet (default: the first of each family that every method ran): A, A′, B,
    the true B′ when the run has one, then each method's B′ (default: every method of the run, in
    the run's order), labelled (by the method spec, or `labels[spec]`); written to `out` (PNG)."""
    labels = labels or {}
    run_dir = Path(run_dir)
    rows = read_results(run_dir)
    methods = methods or list(dict.fromkeys(row["method"] for row in rows))
    ids = ids or first_of_each_family(rows, methods)
    by_key = {(row["method"], row["id"]): row for row in rows}
    lines = []
    for number, triplet_id in enumerate(ids):
        any_row = next(row for (method, rid), row in by_key.items() if rid == triplet_id)
        grid = Image.open(run_dir / any_row["grid"])  # A | A′ | B | B′ | true B′, as the run drew it
        tiles, names = _inputs(grid, run_dir, any_row), ["A", "A'", "B", "true B'"]
        tiles, names = tiles[: len(names)], names[: len(tiles)]
        for method in methods:
            tiles.append(Image.open(run_dir / by_key[(method, triplet_id)]["b_prime"]).convert("RGB"))
            names.append(labels.get(method, method))
        lines.append(image_grid(tiles, names if number == 0 else [""] * len(tiles), height=height))
    width = max(line.width for line in lines)
    figure = Image.new("RGB", (width, sum(line.height for line in lines)), "white")
    y = 0
    for line in lines:
        figure.paste(line, (0, y))
        y += line.height
    out = Path(out)
    figure.save(out)
    return out


def _inputs(grid: Image.Image, run_dir: Path, row: dict) -> list[Image.Image]:
    """A, A′, B and (when drawn) the true B′, cut back out of a run's grid image: tiles of equal
    width (square triplets, as the shapes world's) separated by the grid's 4-px gaps, under an
    18-px label band (see `grid.image_grid`)."""
    label, gap = 18, 4
    side = grid.height - label
    count = (grid.width + gap) // (side + gap)
    tiles = [grid.crop((i * (side + gap), label, i * (side + gap) + side, grid.height)) for i in range(count)]
    return tiles[:3] + tiles[4:5]  # skip the method's own B′ (column 4); keep the truth if present
