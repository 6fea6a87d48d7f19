"""Hard prompts: PEZ inversion of images into words, and the nearest-token projection it rests on.

PEZ (Wen et al., 2023) keeps continuous token embeddings P, but every forward pass uses their
projection onto the nearest vocabulary embeddings; the gradient taken at the projection updates
P (a straight-through estimator). At the end the projection *is* a sequence of real tokens. The
same projection turns DIFF tokens into words (`InversionConfig.hard_tokens`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .clip_space import ClipSpace


def usable_token_mask(tokenizer, vocab_size: int, device) -> torch.Tensor:
    """(V,) bool: every token but <bos>, <eos>, <pad> and <unk>, which would break the prompt."""
    mask = torch.ones(vocab_size, dtype=torch.bool, device=device)
    for special in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}:
        if special is not None and special < vocab_size:
            mask[special] = False
    return mask


def nearest_token_ids(
    embeddings: torch.Tensor, vocabulary: torch.Tensor, usable: torch.Tensor | None = None
) -> torch.Tensor:
    """Ids of the vocabulary rows closest in cosine to each embedding: (..., d) → (...,) long."""
    similarity = F.normalize(embeddings.detach().float(), dim=-1) @ F.normalize(vocabulary.float(), dim=-1).T
    if usable is not None:
        similarity = similarity.masked_fill(~usable, float("-inf"))
    return similarity.argmax(dim=-1)


def project_straight_through(
    embeddings: torch.Tensor, vocabulary: torch.Tensor, usable: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected, ids): forward value = nearest vocabulary embeddings, gradient = identity."""
    ids = nearest_token_ids(embeddings, vocabulary, usable)
    projected = vocabulary[ids].to(embeddings.dtype)
    return embeddings + (projected - embeddings).detach(), ids


def invert_prompt(
    clip: ClipSpace,
    images: list[Image.Image],
    prompt_len: int = 16,
    steps: int = 3000,
    lr: float = 0.1,
    weight_decay: float = 0.1,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> str:
    """A hard prompt of `prompt_len` tokens whose CLIP text feature best matches `images`.

    Returns the best prompt seen (by mean cosine to the images' features), decoded to text.
    """
    vocabulary = clip.vocabulary.detach()
    usable = usable_token_mask(clip.tokenizer, vocabulary.shape[0], vocabulary.device)
    target = clip.image_features(images)  # (B, D)

    candidates = usable.nonzero().squeeze(1).cpu()
    start = candidates[torch.randint(len(candidates), (prompt_len,), generator=generator)]
    prompt = vocabulary[start.to(vocabulary.device)].float().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([prompt], lr=lr, weight_decay=weight_decay)

    best_ids, best_score = start, -float("inf")
    for _ in tqdm(range(max(steps, 1)), desc="PEZ prompt", disable=not progress, leave=False):
        projected, ids = project_straight_through(prompt, vocabulary, usable)
        features = clip.slot_features(projected.unsqueeze(0))  # (1, D)
        score = (features @ target.T).mean()
        if score.item() > best_score:
            best_score, best_ids = score.item(), ids.detach().cpu()
        if steps == 0:
            break
        optimizer.zero_grad(set_to_none=True)
        (1 - score).backward()
        optimizer.step()
    return clip.tokenizer.decode(best_ids.tolist(), skip_special_tokens=True).strip()


def harden(embeddings: torch.Tensor, vocabulary: torch.Tensor, tokenizer) -> tuple[torch.Tensor, list[int], str]:
    """Hard tokens: (vocabulary rows (n, d) float32, their ids, their text) nearest to `embeddings`."""
    usable = usable_token_mask(tokenizer, vocabulary.shape[0], vocabulary.device)
    ids = nearest_token_ids(embeddings.to(vocabulary.device), vocabulary, usable)
    return vocabulary[ids].detach().float(), ids.tolist(), tokenizer.decode(ids.tolist())
