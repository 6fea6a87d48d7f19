"""Pair folders of the seen edit types for `diffinv encoder train --model shapes` (a DIFF-token
encoder for the world's text-to-image route; development only, results.md §10).

The pairs are the editor's encoder's own (`shapes.data.split_edit_pairs`, stream
"diff_encoder/0": seen edit types only, a stream no triplet is drawn from), each written as
DIR/<i>/before.png, after.png and captions.txt (the scenes' canonical captions, which the world's
captioner retrieves).

    python benchmarks/t2i_encoder_pairs.py runs/t2i-encoder-pairs [--n 12000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffinv.shapes.data import split_edit_pairs
from diffinv.shapes.descriptor import TrainingPlan
from diffinv.shapes.world import LAYOUT_RANGE, SPLIT, canonical_caption, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=TrainingPlan().n_edit_pairs)
    args = parser.parse_args()
    plan = TrainingPlan()
    pairs = split_edit_pairs(args.n, f"diff_encoder/{plan.seed}", LAYOUT_RANGE, SPLIT[plan.diff_encoder_split])
    for index, (before, after) in enumerate(pairs):
        folder = args.out / f"{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        render(before).save(folder / "before.png")
        render(after).save(folder / "after.png")
        captions = f"before: {canonical_caption(before)}\nafter: {canonical_caption(after)}\n"
        (folder / "captions.txt").write_text(captions, encoding="utf-8")
    print(f"wrote {len(pairs)} pair folders under {args.out}")


if __name__ == "__main__":
    main()
