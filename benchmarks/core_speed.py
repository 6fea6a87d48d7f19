"""Speed of the core loop and of one analogy, on CPU with tiny random models.

1. Step overhead: the time of one optimisation step of Algorithm 1 (text encoder with ±D̃,
   one batched UNet call, CLIP loss, AdamW) divided by its floor — one batched UNet forward +
   backward on the same two latents and timesteps, the gradient reaching the text states —
   timed in the same run, interleaved to cancel drift.
2. Phase shares of one `analogy` run: preparation (captions, PEZ, deltas, latents), the
   optimisation, and sampling B′.

    python benchmarks/core_speed.py [--steps 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from diffinv import DifferenceInversion, InversionConfig
from diffinv.inversion import fit_diff_tokens, noised_pair
from diffinv.testing import tiny_backbone, tiny_clip_for


def floor_seconds(backbone, pair, n_tokens: int, steps: int, generator) -> float:
    """Per-step time of the UNet alone: batched forward + backward on the pair's latents."""
    ids, mask = backbone.slot_ids([pair.prompt_a_prime, pair.prompt_a], n_tokens)
    with torch.no_grad():
        states = backbone.encode_prompt(ids, mask, torch.zeros(2, n_tokens, backbone.token_width))
    start = time.perf_counter()
    for _ in range(steps):
        noisy, timesteps, targets = noised_pair(backbone, pair.latents, generator)
        leaf = states.detach().requires_grad_(True)
        (backbone.predict(noisy, timesteps, leaf) - targets).pow(2).mean().backward()
    return (time.perf_counter() - start) / steps


def step_seconds(backbone, clip, pair, config, generator) -> float:
    start = time.perf_counter()
    fit_diff_tokens(backbone, clip, pair, config, generator, progress=False)
    return (time.perf_counter() - start) / config.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-analogy", action="store_true", help="only the step / floor ratio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    backbone = tiny_backbone("epsilon")
    clip = tiny_clip_for(backbone.pipe)
    di = DifferenceInversion(backbone, clip, captioner=lambda images: ["a red circle"] * len(images))
    a, a_prime, b = (Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green"))
    config = InversionConfig(steps=args.steps, prompt_source="caption")
    pair = di.prepare(a, a_prime, config, captions=("a red circle", "a blue circle"), progress=False)
    generator = torch.Generator().manual_seed(0)

    step_seconds(backbone, clip, pair, config.replace(steps=20), generator)  # warm-up
    floors, steps = [], []
    for _ in range(args.repeats):
        floors.append(floor_seconds(backbone, pair, config.n_tokens, args.steps, generator))
        steps.append(step_seconds(backbone, clip, pair, config, generator))
    floor, step = statistics.median(floors), statistics.median(steps)
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        f"floor (UNet fwd+bwd, batch 2): {floor * 1e3:.2f} ms   step: {step * 1e3:.2f} ms   ratio: {step / floor:.3f}"
    )

    if args.no_analogy:
        return
    # Phase shares of one analogy with the paper's defaults (PEZ 3000 steps, N = 1000, 50 sampling steps).
    paper = InversionConfig()
    t0 = time.perf_counter()
    prepared = di.prepare(a, a_prime, paper, progress=False)
    t1 = time.perf_counter()
    diff, _ = fit_diff_tokens(backbone, clip, prepared, paper, generator, progress=False)
    t2 = time.perf_counter()
    from diffinv.tokens import DiffTokens

    tokens = DiffTokens(
        diff, backbone.model_id, backbone.vocabulary.shape[0], paper, prepared.prompt_a, prepared.prompt_a_prime
    )
    di.apply(tokens, b, progress=False)  # includes PEZ on B
    t3 = time.perf_counter()
    total = t3 - t0
    print(
        f"analogy (paper defaults, tiny models): {total:.1f} s = "
        f"prepare (captions, PEZ ×2, deltas, latents) {(t1 - t0) / total:.0%}, "
        f"optimisation {(t2 - t1) / total:.0%}, apply (PEZ on B + sampling) {(t3 - t2) / total:.0%}"
    )


if __name__ == "__main__":
    main()
