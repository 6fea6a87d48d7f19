"""Speed-up of fitting several triplets in one batched optimisation (`fit_diff_tokens` on K
pairs, `DifferenceInversion.fit_many`) over fitting them one by one, on the shapes world.

    python benchmarks/batched_fit.py [--pairs 16] [--batches 1,2,4,8,16] [--threads 2]

The same prepared pairs are fitted with each batch size K; the time is the optimisation alone
(preparation is per pair either way), in seconds per pair, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffinv.inversion import fit_diff_tokens
from diffinv.shapes import load_shapes
from diffinv.shapes.world import render, triplets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    di = load_shapes(device="cpu")
    config = di.default_config
    prepared = [
        di.prepare(render(t.a), render(t.a_prime), config, progress=False) for t in triplets(args.pairs, seed=0)
    ]
    print(f"{args.pairs} shapes pairs, {config.steps} steps, {args.threads} thread(s)")
    print(f"{'K':>3} {'s/pair':>8} {'speed-up':>9}")
    baseline = None
    for k in (int(v) for v in args.batches.split(",")):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(0, args.pairs, k):
                fit_diff_tokens(
                    di.backbone, di.clip, prepared[i : i + k], config, torch.Generator().manual_seed(i), progress=False
                )
            best = min(best, (time.perf_counter() - start) / args.pairs)
        baseline = baseline or best
        print(f"{k:>3} {best:8.3f} {baseline / best:8.2f}×", flush=True)


if __name__ == "__main__":
    main()
