"""Why the editor's per-pair fit leaks (docs/results.md §7): L_tc of the fitted D̃ against the true
instruction of A → A′ written as words into the DIFF-token slots.

    python benchmarks/leak_probe.py --triplet-seed 7 --index 13

For one shapes triplet: each branch of the editor's L_tc (summed over the latent, as the editor's
fit sums it), averaged over 200 fixed noise draws, for zeros, the D̃ the editor's 200-step fit
gives (`--init zeros --steps 200`) and every wording of the world's instruction for A → A′
(words in the first slots, <eos> after them).
"""

from __future__ import annotations

import argparse

import torch

from diffinv import DifferenceInversion
from diffinv.bench.datasets import shapes_dataset
from diffinv.inversion import latent_pair, noised_pair, signed_pair
from diffinv.shapes.world import instruction_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplet-seed", type=int, default=7)
    parser.add_argument("--index", type=int, default=13)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()

    triplet = shapes_dataset(args.index + 1, seed=args.triplet_seed, layout_range=5.0)[args.index]
    di = DifferenceInversion.from_pretrained("shapes-editor")
    editor, tokenizer = di.backbone, di.backbone.tokenizer
    n_tokens = di.default_config.n_tokens
    vocabulary = editor.vocabulary.detach().float()

    def as_words(text: str) -> torch.Tensor:
        ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] * n_tokens
        return vocabulary[torch.tensor(ids[:n_tokens])]

    a, a_prime = triplet.a(), triplet.a_prime()
    fit = di.default_config.replace(init="zeros", steps=200)
    candidates = {"zeros": torch.zeros(n_tokens, editor.token_width)}
    candidates["the fit"] = di.fit(a, a_prime, fit, seed=args.index, progress=False).embeddings.float()
    target = getattr(triplet.truth.a_prime, triplet.family)
    for wording in instruction_variants(triplet.family, triplet.truth.a, target):
        candidates[repr(wording)] = as_words(wording)

    latents = latent_pair(editor, a, a_prime)
    shown = editor.pair_conditioning(latents)
    ids, slot_mask = editor.slot_ids(["", ""], n_tokens)
    generator = torch.Generator().manual_seed(0)
    draws = [noised_pair(editor, latents, generator) for _ in range(args.draws)]
    print(f"triplet {triplet.id} ({triplet.family}); mean over {args.draws} draws, rows: before (A′ → A, −D̃), after")
    for name, diff in candidates.items():
        with torch.no_grad():
            states = editor.encode_prompt(ids, slot_mask, signed_pair(diff[None]))
            total = sum((editor.predict(n, t, states, shown) - y).pow(2).sum(dim=(1, 2, 3)) for n, t, y in draws)
        before, after = (total / args.draws).tolist()
        print(f"{name:40s} before {before:8.2f}  after {after:8.2f}")


if __name__ == "__main__":
    main()
