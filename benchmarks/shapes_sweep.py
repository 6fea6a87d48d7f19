"""Sweep Difference Inversion settings on shapes-world triplets (used to pick the world's defaults).

    python benchmarks/shapes_sweep.py --n 25 --grid "strength=0.6,0.8,1.0" --grid "steps=50,150"

Every combination of the grids is evaluated on the same seeded triplets; one line each.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from diffinv.shapes import MODEL_DIR, load_shapes
from diffinv.shapes.classifier import AttributeClassifier
from diffinv.shapes.evaluate import evaluate_analogies
from diffinv.shapes.world import triplets


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="append", default=[], help="field=v1,v2,… (repeatable)")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    di = load_shapes(device="cpu", model_dir=args.model_dir)
    classifier = AttributeClassifier.load(Path(args.model_dir or MODEL_DIR) / "classifier")
    grid = {field: [parse_value(v) for v in values.split(",")] for field, values in (g.split("=", 1) for g in args.grid)}
    cases = triplets(args.n, args.seed)
    for combination in itertools.product(*grid.values()):
        changes = dict(zip(grid, combination))
        result = evaluate_analogies(di, cases, ("difference-inversion",), di.default_config.replace(**changes), classifier, progress=False)["difference-inversion"]
        print(json.dumps({**changes, **{k: round(v, 3) for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
