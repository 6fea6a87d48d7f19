"""The example triplets in `examples/`: one shapes-world triplet per family, with its ground truth.

    python -c "from diffinv.shapes.examples import write_examples; write_examples('examples')"

Each family's folder holds `a.png`, `a_prime.png`, `b.png`, the ground-truth `b_prime.png` and a
`captions.txt` (`family:`, the four captions, and the `instruction:` that turns B into B′) — the
folder-dataset layout of `diffinv bench`. In world v2 the example B is one whose shape sits
visibly off-centre, so that a B′ that loses B's layout shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .world import FAMILIES, LAYOUT_RANGE, Triplet, canonical_caption, render, triplets

OFF_CENTRE = 2.5  # px: the example B's offset on at least one axis (world v2)


def example_triplets(seed: int = 0, layout_range: float = LAYOUT_RANGE) -> dict[str, Triplet]:
    """The first triplet of each family among the seeded ones whose B is off-centre by ≥ OFF_CENTRE
    px on some axis (any B when the layout range is smaller than that, as in world v1)."""
    wanted = min(OFF_CENTRE, layout_range)
    chosen: dict[str, Triplet] = {}
    for triplet in triplets(50 * len(FAMILIES), seed, FAMILIES, layout_range):
        if triplet.family not in chosen and max(abs(triplet.b.dx), abs(triplet.b.dy)) >= wanted:
            chosen[triplet.family] = triplet
    return {family: chosen[family] for family in FAMILIES}


def write_examples(root: str | os.PathLike, seed: int = 0, layout_range: float = LAYOUT_RANGE) -> list[Path]:
    """Write one folder per family under `root` (replacing the files there); returns the folders."""
    folders = []
    for family, triplet in example_triplets(seed, layout_range).items():
        folder = Path(root) / family
        folder.mkdir(parents=True, exist_ok=True)
        for name, scene in (
            ("a", triplet.a),
            ("a_prime", triplet.a_prime),
            ("b", triplet.b),
            ("b_prime", triplet.b_prime),
        ):
            render(scene).save(folder / f"{name}.png")
        lines = [f"family: {family}"]
        lines += [
            f"{name}: {canonical_caption(scene)}"
            for name, scene in (
                ("a", triplet.a),
                ("a_prime", triplet.a_prime),
                ("b", triplet.b),
                ("b_prime", triplet.b_prime),
            )
        ]
        lines.append(f"instruction: {triplet.instruction}")
        (folder / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders
