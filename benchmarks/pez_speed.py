"""Speed of PEZ hard-prompt inversion on CPU with the tiny random models of `diffinv.testing`.

1. One analogy's three prompts (A, A′, B), same steps each: three inversions one after the
   other with the code before batching (kept below as `reference_invert_prompt`), three with
   the current code one by one, and the current code's one batched inversion (K = 3).
2. The nearest-token projection of 3 × 16 embeddings at Stable Diffusion 2.x's vocabulary size
   (49408 × 1024, random rows): normalising the table at every call (as before) against a
   `TokenTable` normalised once.

    python benchmarks/pez_speed.py [--steps 500] [--repeats 3] [--threads 1]

Times are medians of `--repeats`, the three variants of part 1 interleaved to cancel drift.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diffinv.pez import TokenTable, invert_prompts, random_token_ids, usable_token_mask
from diffinv.testing import tiny_backbone, tiny_clip_for


def reference_invert_prompt(clip, images, prompt_len, steps, lr=0.1, weight_decay=0.1, generator=None) -> str:
    """`pez.invert_prompt` before batching: one prompt, the vocabulary normalised at every step,
    the best score compared on the host at every step (`.item()`)."""
    vocabulary = clip.vocabulary.detach()
    usable = usable_token_mask(clip.tokenizer, vocabulary.shape[0], vocabulary.device)
    target = clip.image_features(images)

    def project(embeddings):
        similarity = F.normalize(embeddings.detach().float(), dim=-1) @ F.normalize(vocabulary.float(), dim=-1).T
        ids = similarity.masked_fill(~usable, float("-inf")).argmax(dim=-1)
        projected = vocabulary[ids].to(embeddings.dtype)
        return embeddings + (projected - embeddings).detach(), ids

    candidates = usable.nonzero().squeeze(1).cpu()
    start = candidates[torch.randint(len(candidates), (prompt_len,), generator=generator)]
    prompt = vocabulary[start.to(vocabulary.device)].float().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([prompt], lr=lr, weight_decay=weight_decay)
    best_ids, best_score = start, -float("inf")
    for _ in range(max(steps, 1)):
        projected, ids = project(prompt)
        score = (clip.slot_features(projected.unsqueeze(0)) @ target.T).mean()
        if score.item() > best_score:
            best_score, best_ids = score.item(), ids.detach().cpu()
        optimizer.zero_grad(set_to_none=True)
        (1 - score).backward()
        optimizer.step()
    return clip.tokenizer.decode(best_ids.tolist(), skip_special_tokens=True).strip()


def picture(colour: str, shape: str, size=(32, 32)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    clip = tiny_clip_for(tiny_backbone("epsilon").pipe)
    images = [picture("red", "circle"), picture("blue", "circle"), picture("red", "square", (60, 30))]
    vocab_size = clip.vocabulary.shape[0]

    def reference():
        generator = torch.Generator().manual_seed(0)
        for image in images:
            reference_invert_prompt(clip, [image], args.prompt_len, args.steps, generator=generator)

    def one_by_one():
        starts = random_token_ids(clip.tokenizer, vocab_size, (3, args.prompt_len), torch.Generator().manual_seed(0))
        for k, image in enumerate(images):
            invert_prompts(clip, [[image]], starts[k : k + 1], args.steps, progress=False)

    def batched():
        starts = random_token_ids(clip.tokenizer, vocab_size, (3, args.prompt_len), torch.Generator().manual_seed(0))
        invert_prompts(clip, [[image] for image in images], starts, args.steps, progress=False)

    variants = {"before, 3 one by one": reference, "now, 3 one by one": one_by_one, "now, 1 batched (K = 3)": batched}
    for function in variants.values():  # warm-up
        timed(function)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, function in variants.items():
            times[name].append(timed(function))
    print(f"torch threads: {torch.get_num_threads()}; 3 prompts of {args.prompt_len} tokens, {args.steps} steps each")
    baseline = statistics.median(times["before, 3 one by one"])
    for name, values in times.items():
        seconds = statistics.median(values)
        per_step = seconds / args.steps / (1 if "batched" in name else 3) * 1e3
        print(
            f"{name:<24} {seconds:7.2f} s   {per_step:6.2f} ms per step of one run   "
            f"speed-up {baseline / seconds:5.2f}×"
        )

    vocabulary = torch.randn(49408, 1024, generator=torch.Generator().manual_seed(0)) * 0.02
    usable = torch.ones(49408, dtype=torch.bool)
    usable[-2:] = False
    embeddings = torch.randn(3, args.prompt_len, 1024, generator=torch.Generator().manual_seed(1)) * 0.02
    calls = 20

    def old_projection():
        for _ in range(calls):
            similarity = F.normalize(embeddings.float(), dim=-1) @ F.normalize(vocabulary.float(), dim=-1).T
            similarity.masked_fill(~usable, float("-inf")).argmax(dim=-1)

    table = TokenTable(vocabulary, usable)
    old = statistics.median(timed(old_projection) for _ in range(args.repeats)) / calls
    new = (
        statistics.median(
            timed(lambda: [table.nearest(embeddings) for _ in range(calls)]) for _ in range(args.repeats)
        )
        / calls
    )
    print(
        f"projection of 3 × {args.prompt_len} embeddings, V = 49408, d = 1024: normalise every call "
        f"{old * 1e3:.1f} ms, TokenTable {new * 1e3:.1f} ms ({old / new:.1f}×); "
        f"building the table once {timed(lambda: TokenTable(vocabulary, usable)) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
