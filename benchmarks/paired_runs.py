"""Paired differences between two bench runs on the same triplets: a method of run B minus a method
of run A, over the triplet ids both have (95 % Student's t intervals, as `diffinv bench report`).

For what one run cannot hold beside another: e.g. `--examples 3` against `--examples 1` (a run's
example count is one setting of the run), where both runs drew the same triplets.

    python benchmarks/paired_runs.py RUN_A METHOD_A RUN_B METHOD_B [--metric correct ...]

Torch-free: it reads the two results.jsonl files only.
"""

from __future__ import annotations

import argparse
import sys

from diffinv.bench.report import latest_rows, mean_interval
from diffinv.bench.results import read_results
from diffinv.errors import DiffinvError

PERCENT = ("correct", "edit", "preserved")


def rows_by_id(run_dir: str, method: str) -> dict[str, dict]:
    """The latest row of `method` per triplet id in `run_dir`; a method the run lacks is an error."""
    rows = {row["id"]: row for row in latest_rows(read_results(run_dir)) if row["method"] == method}
    if not rows:
        raise DiffinvError(f"{run_dir} has no rows of {method!r}")
    return rows


def paired(run_a: str, method_a: str, run_b: str, method_b: str, metrics=PERCENT) -> list[dict]:
    """Per metric: n, A's mean, B's mean ± its interval, and B − A ± the paired interval (percent)."""
    a, b = rows_by_id(run_a, method_a), rows_by_id(run_b, method_b)
    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        raise DiffinvError(f"the two runs share {len(ids)} triplet(s) of these methods; at least 2 are needed")
    out = []
    for metric in metrics:
        values_a = [100 * a[i][metric] for i in ids]
        values_b = [100 * b[i][metric] for i in ids]
        mean_b, half_b = mean_interval(values_b)
        difference, half = mean_interval([y - x for x, y in zip(values_a, values_b)])
        out.append(
            dict(
                metric=metric,
                n=len(ids),
                a=sum(values_a) / len(ids),
                b=mean_b,
                b_half=half_b,
                d=difference,
                d_half=half,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("method_a")
    parser.add_argument("run_b")
    parser.add_argument("method_b")
    parser.add_argument("--metric", action="append", help="a row's score (default: correct, edit, preserved)")
    args = parser.parse_args(argv)
    try:
        table = paired(args.run_a, args.method_a, args.run_b, args.method_b, tuple(args.metric or PERCENT))
    except DiffinvError as error:
        print(f"paired_runs: error: {error}", file=sys.stderr)
        return 2
    print(f"B − A: B = {args.method_b} in {args.run_b}; A = {args.method_a} in {args.run_a}")
    print("| metric | n | A (%) | B (%) | B − A (points) |\n| --- | --- | --- | --- | --- |")
    for r in table:
        b, difference = f"{r['b']:.1f} ± {r['b_half']:.1f}", f"{r['d']:+.1f} ± {r['d_half']:.1f}"
        print(f"| {r['metric']} | {r['n']} | {r['a']:.1f} | {b} | {difference} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
