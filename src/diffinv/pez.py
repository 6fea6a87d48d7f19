"""Hard prompts: PEZ inversion of images into words, and the nearest-token projection it rests on.

PEZ (Wen et al., 2023) keeps continuous token embeddings P, but every forward pass uses their
projection onto the nearest vocabulary embeddings; the gradient taken at the projection updates
P (a straight-through estimator). At the end the projection *is* a sequence of real tokens. The
same projection turns DIFF tokens into words (`InversionConfig.hard_tokens`).

`invert_prompts` inverts K prompts, each with its own images, in one optimisation: one batched
CLIP text-tower call per step. A `TokenTable` normalises the vocabulary once per inversion, and
the best prompt of each row is tracked on the device, so the loop never waits for the host.

Every hard token is one of the *usable* vocabulary rows (`usable_token_mask`): a token whose own
text is a whole word that the tokenizer turns back into that one token. Byte-level BPE also has
tokens that are no such word: bytes of a multi-byte UTF-8 character (alone they decode to U+FFFD),
pieces without the end-of-word mark `</w>` (their text glues onto the next word's, "_" + "nto" →
"_nto", which tokenizes otherwise), upper-case bytes (the tokenizer lower-cases) and whitespace.
Projecting hard DIFF tokens only onto such rows (`words_only=True`) makes their words
(`token_words`) text that the tokenizer turns back into exactly those ids, so that they can be
exported as words and pasted into any prompt. PEZ's prompts keep the whole vocabulary but the
special tokens, as PEZ (and so the paper) has it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .clip_space import ClipSpace

# tokenizer → {(len(tokenizer), vocab_size): (V,) bool CPU mask}: the round-trip test decodes and
# tokenizes the whole vocabulary, so it runs once per tokenizer, not once per projection table.
_ROUND_TRIPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_texts(tokenizer, ids) -> list[str]:
    """Each id's own text: `tokenizer.decode([id])` without the space its end-of-word mark gives."""
    return [text.strip() for text in tokenizer.batch_decode([[int(i)] for i in ids])]


def token_words(tokenizer, ids) -> str:
    """The words of token `ids`: each token's own text, one space between two (special tokens left
    out). For usable ids (`usable_token_mask`) the tokenizer turns this text back into exactly
    `ids`: each word is one usable token, and CLIP's pre-tokenizer never joins across whitespace."""
    special = set(tokenizer.all_special_ids)
    return " ".join(text for text in token_texts(tokenizer, [i for i in ids if int(i) not in special]) if text)


def _round_trip_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool on the CPU: the ids whose own text is one word (no whitespace, no U+FFFD) that the
    tokenizer turns back into that id alone."""
    key = (len(tokenizer), vocab_size)
    try:
        cached = _ROUND_TRIPS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        cached = {}
    if key not in cached:
        known = min(vocab_size, len(tokenizer))  # rows past the tokenizer's ids have no text
        texts = token_texts(tokenizer, range(known))
        encoded = tokenizer(texts, add_special_tokens=False).input_ids if texts else []
        whole = [
            ids == [i] and "\ufffd" not in text and not any(c.isspace() for c in text)
            for i, (text, ids) in enumerate(zip(texts, encoded))
        ]
        cached[key] = torch.tensor(whole + [False] * (vocab_size - known), dtype=torch.bool)
    return cached[key]


def usable_token_mask(tokenizer, vocab_size: int, device, words_only: bool = False) -> torch.Tensor:
    """(V,) bool: the tokens a hard prompt or hard DIFF token may use — every token but <bos>,
    <eos>, <pad> and <unk>, which would break the prompt; with `words_only`, only those whose own
    text is a whole word that the tokenizer gives back as that token (see the module's docstring)."""
    mask = _round_trip_mask(tokenizer, vocab_size).clone() if words_only else torch.ones(vocab_size, dtype=torch.bool)
    for special in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}:
        if special is not None and special < vocab_size:
            mask[special] = False
    return mask.to(device)


def random_token_ids(
    tokenizer,
    vocab_size: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    words_only: bool = False,
):
    """`shape` long tensor on the CPU: usable token ids (`usable_token_mask`) drawn uniformly with
    `generator` (a CPU generator; None: torch's global one). Draws are sequential, so (2, L) equals
    two (1, L) draws."""
    candidates = usable_token_mask(tokenizer, vocab_size, "cpu", words_only).nonzero().squeeze(1)
    return candidates[torch.randint(len(candidates), shape, generator=generator)]


class TokenTable:
    """A vocabulary (V, d) prepared once for nearest-token look-ups: the ids allowed as answers
    (U,) and their rows normalised to unit length (U, d) float32."""

    def __init__(self, vocabulary: torch.Tensor, usable: torch.Tensor | None = None):
        self.rows = vocabulary.detach()  # (V, d)
        self.ids = (
            torch.arange(len(self.rows), device=self.rows.device) if usable is None else usable.nonzero().squeeze(1)
        )
        self.unit = F.normalize(self.rows[self.ids].float(), dim=-1)

    @classmethod
    def of(cls, vocabulary: torch.Tensor, tokenizer, words_only: bool = False) -> TokenTable:
        """The table of the usable tokens (`usable_token_mask`): no special tokens, and with
        `words_only` whole words only (hard DIFF tokens)."""
        return cls(vocabulary, usable_token_mask(tokenizer, vocabulary.shape[0], vocabulary.device, words_only))

    def nearest(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Ids of the allowed rows closest in cosine to each embedding: (..., d) → (...,) long.
        A zero embedding is equally far from all; it gets the lowest allowed id."""
        similarity = F.normalize(embeddings.detach().float(), dim=-1) @ self.unit.T
        return self.ids[similarity.argmax(dim=-1)]

    def project(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected (..., d), ids (...,)): forward value = the nearest rows exactly (e − e is 0),
        gradient = identity."""
        ids = self.nearest(embeddings)
        projected = self.rows[ids].to(embeddings.dtype)
        return projected + (embeddings - embeddings.detach()), ids


def nearest_token_ids(
    embeddings: torch.Tensor, vocabulary: torch.Tensor, usable: torch.Tensor | None = None
) -> torch.Tensor:
    """Ids of the vocabulary rows closest in cosine to each embedding: (..., d) → (...,) long.
    Builds a `TokenTable` each call; loops build one before they start."""
    return TokenTable(vocabulary, usable).nearest(embeddings)


def project_straight_through(
    embeddings: torch.Tensor, vocabulary: torch.Tensor, usable: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected, ids): forward value = nearest vocabulary embeddings, gradient = identity.
    Builds a `TokenTable` each call; loops build one before they start."""
    return TokenTable(vocabulary, usable).project(embeddings)


@dataclass
class HardPrompts:
    """What `invert_prompts` found for K prompts."""

    ids: torch.Tensor  # (K, L) long, CPU: each prompt's best tokens
    scores: torch.Tensor  # (K,) float32, CPU: their mean cosine to the prompt's image features
    texts: list[str]  # K decoded prompts, special tokens removed


def invert_prompts(
    clip: ClipSpace,
    targets: list[list[Image.Image]],
    starts: torch.Tensor,
    steps: int = 3000,
    lr: float = 0.1,
    weight_decay: float = 0.1,
    progress: bool = True,
) -> HardPrompts:
    """K hard prompts in one optimisation; prompt k's CLIP text feature is fitted to `targets[k]`.

    starts: (K, L) token ids to start from (e.g. `random_token_ids`). The (K, L, d) embeddings go
    through one text-tower call per step. Prompt k's score (mean cosine to its images) depends on
    prompt k alone and AdamW works element-wise, so the sum of the K losses moves each prompt as a
    run of its own from the same start would. `steps` updates; the prompts before and after every
    update are scored and each row's best is kept (on the device: no host sync in the loop).
    """
    if len(targets) != starts.shape[0]:
        raise ValueError(f"{len(targets)} image lists for {starts.shape[0]} starting prompts")
    table = TokenTable.of(clip.vocabulary, clip.tokenizer)
    features = clip.image_features([image for images in targets for image in images])  # (ΣB_k, D)
    target = torch.stack([f.mean(dim=0) for f in features.split([len(images) for images in targets])])  # (K, D)

    best_ids = starts.to(table.rows.device)
    prompt = table.rows[best_ids].float().clone().requires_grad_(True)  # (K, L, d)
    optimizer = torch.optim.AdamW([prompt], lr=lr, weight_decay=weight_decay)
    best_scores = torch.full((len(targets),), -float("inf"), device=target.device)
    for step in tqdm(range(steps + 1), desc="PEZ prompts", disable=not progress, leave=False):
        projected, ids = table.project(prompt)
        scores = (clip.slot_features(projected) * target).sum(dim=-1)  # (K,): f_k · mean_j t_kj
        better = scores.detach() > best_scores
        best_scores = torch.where(better, scores.detach(), best_scores)
        best_ids = torch.where(better[:, None], ids, best_ids)
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        (1 - scores).sum().backward()
        optimizer.step()

    best_ids = best_ids.cpu()
    texts = [clip.tokenizer.decode(row, skip_special_tokens=True).strip() for row in best_ids.tolist()]
    return HardPrompts(best_ids, best_scores.cpu(), texts)


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
    """One hard prompt of `prompt_len` tokens whose CLIP text feature best matches `images`,
    decoded to text; the start is drawn with `generator` (CPU). See `invert_prompts`."""
    starts = random_token_ids(clip.tokenizer, clip.vocabulary.shape[0], (1, prompt_len), generator)
    return invert_prompts(clip, [images], starts, steps, lr, weight_decay, progress).texts[0]


def harden(embeddings: torch.Tensor, vocabulary: torch.Tensor, tokenizer) -> tuple[torch.Tensor, list[int], str]:
    """Hard tokens: (vocabulary rows (n, d) float32, their ids, their words) nearest to `embeddings`
    among the whole-word rows; the tokenizer turns the words back into exactly those ids (`token_words`)."""
    ids = TokenTable.of(vocabulary, tokenizer, words_only=True).nearest(embeddings.to(vocabulary.device)).tolist()
    return vocabulary[ids].detach().float(), ids, token_words(tokenizer, ids)
