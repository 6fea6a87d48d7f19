"""How much say each loss has over D̃: the norm of the L_tc gradient (λ_tc-weighted, averaged
over noise draws) divided by that of the L_clip gradient (λ_clip-weighted), at the zero start
and at the fitted D̃, on shapes-world triplets with the world's defaults.

    python benchmarks/gradient_balance.py [--n 10] [--draws 8]

AdamW normalises the summed gradient, so a ratio far below 1 means L_tc barely steers the fit
(docs/results.md §2).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from diffinv.inversion import clip_loss, noised_pair, token_consistency_loss
from diffinv.shapes import load_shapes
from diffinv.shapes.world import render, triplets


def gradient_ratio(di, pair, diff: torch.Tensor, config, draws: int) -> float:
    """|∇ λ_tc L_tc| / |∇ λ_clip L_clip| at D̃ = `diff` (1, n, d)."""
    diff = diff.clone().requires_grad_(True)
    ids, mask = di.backbone.slot_ids([pair.prompt_a_prime, pair.prompt_a], config.n_tokens)
    generator = torch.Generator().manual_seed(0)
    grad_tc = (
        sum(
            torch.autograd.grad(
                config.lambda_tc
                * token_consistency_loss(
                    di.backbone, diff, ids, mask, *noised_pair(di.backbone, pair.latents, generator)
                ).sum(),
                diff,
            )[0]
            for _ in range(draws)
        )
        / draws
    )
    grad_clip = torch.autograd.grad(
        config.lambda_clip * clip_loss(di.clip, diff, pair.target_delta[None], config.clip_loss_space).sum(), diff
    )[0]
    return (grad_tc.norm() / grad_clip.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    di = load_shapes(device="cpu")
    config = di.default_config
    ratios: dict[str, list[float]] = {"zero start": [], "fitted": []}
    for index, triplet in enumerate(triplets(args.n, seed=0)):
        a, a_prime = render(triplet.a), render(triplet.a_prime)
        pair = di.prepare(a, a_prime, config, seed=index, progress=False)
        fitted = di.fit(a, a_prime, config, seed=index, progress=False).embeddings[None]
        ratios["zero start"].append(gradient_ratio(di, pair, torch.zeros_like(fitted), config, args.draws))
        ratios["fitted"].append(gradient_ratio(di, pair, fitted, config, args.draws))
    for name, values in ratios.items():
        print(
            f"{name:>10}: median {statistics.median(values):.4f}, range {min(values):.4f} – {max(values):.4f}"
            f"  (|grad tc| / |grad clip|, {args.n} triplets)"
        )


if __name__ == "__main__":
    main()
