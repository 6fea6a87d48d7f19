"""A research probe, not library code: Difference Inversion fitted on, and drawn by, the shapes
world's instruction editor (its InstructPix2Pix), instead of the text-to-image model.

Why: drawing B′ from B's DDIM inversion keeps B's layout in about half of the world-v2 triplets
even when the prompt is the true caption of B′ (docs/results.md §7, "the sampler's ceiling"),
while the editor, which sees B's pixels, keeps it in 91–96 % (§8). Here the DIFF tokens are the
editor's instruction, fitted with Difference Inversion's own losses:

- L_tc on the editor, both branches as in the paper: z_A′,t conditioned on the image A and
  {"", +D̃}, and z_A,t conditioned on A′ and {"", −D̃} (the instruction has no words, only the
  DIFF tokens), summed over the latent (the world's `tc_reduction="sum"`), weight λ_tc = 0.01;
- the in-context CLIP loss on prompt_A / prompt_A′ (the world's default), weight λ_clip = 6 —
  the editor's text encoder is the world's, so CLIP's text tower is its encoder;
- AdamW, lr 1e-2, 100 steps (the world's fit budget), zero start, n = 5;
- B′ = the editor on B with {"", D̃}: 20 Euler-ancestral steps, guidance 4, image guidance 3
  (the world's InstructPix2Pix budget, diffinv.json).

Records one JSON line per triplet (the bench's scores from the world's classifier) and resumes;
two shells may share the work with --shard 0/2 and --shard 1/2.

    python benchmarks/editor_probe.py --triplet-seed 7 --n 20 --out runs/editor-probe-s7.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

from diffinv.backbone import StableDiffusionBackbone
from diffinv.bench.datasets import shapes_dataset
from diffinv.inversion import clip_loss, prompt_context
from diffinv.model_card import model_card
from diffinv.pipeline import DifferenceInversion
from diffinv.shapes.classifier import AttributeClassifier
from diffinv.shapes.evaluate import score


def fit_on_editor(
    di, editor, pipe, a, a_prime, seed: int, steps: int, with_prompts: bool = False, **changes
) -> torch.Tensor:
    """D̃ (1, n, d) from (A, A′) with L_tc on the editor (both branches) and the in-context CLIP loss.
    with_prompts: the branches' text is {prompt_A, +D̃} and {prompt_A′, −D̃}, as in the paper's L_tc,
    instead of the DIFF tokens alone. changes: to the world's configuration (n_tokens, lambda_clip)."""
    config = di.default_config.replace(**changes)
    pair = di.prepare(a, a_prime, config, seed=seed, progress=False)
    with torch.no_grad():
        clean = editor.encode_images([a_prime, a])  # rows: "after" (z_A′), "before" (z_A)
        shown = torch.cat(
            [pipe.vae.encode(pipe.image_processor.preprocess(x)).latent_dist.mode() for x in (a, a_prime)]
        )
    ids, slot_mask = editor.slot_ids(
        [pair.prompt_a, pair.prompt_a_prime] if with_prompts else ["", ""], config.n_tokens
    )
    context = prompt_context(di.clip, [pair], config.n_tokens)
    generator = torch.Generator().manual_seed(seed)
    diff = torch.zeros(1, config.n_tokens, editor.token_width, requires_grad=True)
    optimizer = torch.optim.AdamW([diff], lr=config.learning_rate, weight_decay=config.weight_decay)
    for _ in range(steps):
        timesteps = torch.randint(0, editor.num_train_timesteps, (2,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = editor.add_noise(clean, noise, timesteps)
        states = editor.encode_prompt(ids, slot_mask, torch.cat([diff, -diff]))  # +D̃ with A, −D̃ with A′
        prediction = pipe.unet(torch.cat([noisy, shown], dim=1), timesteps, encoder_hidden_states=states).sample
        loss_tc = (prediction - editor.loss_target(clean, noise, timesteps)).pow(2).sum()
        loss_clip = clip_loss(di.clip, diff, pair.target_delta.unsqueeze(0), "in-context", context).sum()
        loss = config.lambda_tc * loss_tc + config.lambda_clip * loss_clip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return diff.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplet-seed", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--shard", default="0/1", help="K/M: this shell takes every M-th triplet from K")
    parser.add_argument("--n-tokens", type=int, default=5)
    parser.add_argument("--lambda-clip", type=float, default=6.0)
    parser.add_argument(
        "--with-prompts",
        action="store_true",
        help="prompt_A / prompt_A′ beside the DIFF tokens in the fit, prompt_B beside them in the draw",
    )
    parser.add_argument(
        "--draw",
        action="append",
        metavar="G,IG,S",
        help="draw B′ at text guidance G, image guidance IG and edit strength S (D̃ scaled by S); repeat for "
        "several draws from one fit, recorded with a 'draw' key (default: the world's budget, S = 1)",
    )
    args = parser.parse_args()
    rank, world = (int(x) for x in args.shard.split("/"))
    torch.set_num_threads(1)

    card = model_card("shapes")
    di = DifferenceInversion.from_pretrained("shapes", device="cpu")
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(card.path("editor")))
    editor = StableDiffusionBackbone(pipe, "editor")  # its training schedule, VAE and text encoder
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    classifier = AttributeClassifier.load(card.path("classifier"))
    baseline = card.bench["baselines"]["instructpix2pix"]
    draws = [tuple(float(x) for x in d.split(",")) for d in args.draw or []]
    draws = draws or [(baseline["guidance_scale"], baseline["image_guidance_scale"], 1.0)]

    done = set()
    if args.out.exists():
        done = {json.loads(line)["id"] for line in args.out.read_text().splitlines() if line.strip()}
    for index, triplet in enumerate(shapes_dataset(args.n, seed=args.triplet_seed, layout_range=5.0)):
        if index % world != rank or triplet.id in done:
            continue
        start = time.perf_counter()
        a, a_prime, b = triplet.a(), triplet.a_prime(), triplet.b()
        diff = fit_on_editor(
            di, editor, pipe, a, a_prime, seed=index, steps=args.steps, with_prompts=args.with_prompts,
            n_tokens=args.n_tokens, lambda_clip=args.lambda_clip,
        )  # fmt: skip
        prompt_b = di.describe_b(b, di.default_config, index, False) if args.with_prompts else ""
        rows = []
        for draw in draws:
            guidance, image_guidance, strength = draw
            with torch.no_grad():
                ids, slot_mask = editor.slot_ids([prompt_b], diff.shape[1])
                states = editor.encode_prompt(ids, slot_mask, strength * diff)
                b_prime = pipe(
                    image=b,
                    prompt_embeds=states,
                    num_inference_steps=baseline["steps"],
                    guidance_scale=guidance,
                    image_guidance_scale=image_guidance,
                    generator=torch.Generator().manual_seed(index),
                ).images[0]
            row = {"id": triplet.id, "index": index, "family": triplet.family, "draw": ",".join(map(str, draw))}
            row.update(score(classifier.predict([b_prime])[0], triplet.truth, classifier.layout_threshold))
            rows.append(row)
        for row in rows:
            row["seconds"] = time.perf_counter() - start  # the fit and every draw
        with args.out.open("a") as out:
            out.write("".join(json.dumps(row) + "\n" for row in rows))
        print(rows, flush=True)


if __name__ == "__main__":
    main()
