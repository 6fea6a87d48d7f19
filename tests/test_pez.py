"""PEZ: nearest-token projection with a straight-through gradient, hard prompts (solo and batched),
`harden`."""

import numpy as np
import pytest
import torch

import diffinv.inversion
from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config
from diffinv.inversion import pez_prompt, prompt_pairs
from diffinv.pez import (
    TokenTable,
    harden,
    invert_prompt,
    invert_prompts,
    nearest_token_ids,
    project_straight_through,
    random_token_ids,
    token_words,
    usable_token_mask,
)


def specials(tokenizer) -> set[int]:
    return {
        i
        for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
        if i is not None
    }


def by_token(tokenizer, *tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(tokens))


# Byte-level BPE tokens that are no word: "_" and "a" without </w> glue onto the next word; "Ã" and
# "©</w>" are the two bytes of "é" (alone, U+FFFD); "A</w>" is lower-cased by the tokenizer; "Ġ</w>"
# is a space. The tiny models' and the shapes world's tokenizers have them all.
NOT_WORDS = ("_", "a", "Ã", "©</w>", "A</w>", "Ġ</w>")


@pytest.fixture(scope="module")
def shapes_tokenizer():
    from transformers import CLIPTokenizer

    from diffinv.shapes import MODEL_DIR

    return CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer")


@pytest.fixture(params=["tiny", "shapes"])
def tokenizer(request, backbone, shapes_tokenizer):
    return backbone.tokenizer if request.param == "tiny" else shapes_tokenizer


def test_usable_mask_keeps_exactly_the_words_that_tokenize_back_to_themselves(tokenizer):
    vocab_size = len(tokenizer)
    usable = usable_token_mask(tokenizer, vocab_size, "cpu", words_only=True)
    assert usable.shape == (vocab_size,) and usable.dtype == torch.bool
    assert not usable[sorted(specials(tokenizer))].any()
    assert not usable[by_token(tokenizer, *NOT_WORDS)].any()
    for i in range(vocab_size):
        text = tokenizer.decode([i]).strip()
        whole = tokenizer(text, add_special_tokens=False).input_ids == [i] and "\ufffd" not in text
        assert bool(usable[i]) == (whole and " " not in text and i not in specials(tokenizer)), (i, text)
    assert usable.sum() > 200  # every listed word, its suffixes, digits, punctuation, lower-case letters
    assert usable[by_token(tokenizer, "red</w>", "circle</w>", "a</w>", "_</w>", "1</w>", ".</w>")].all()
    # rows past the tokenizer's ids (a padded embedding table) have no text
    assert not usable_token_mask(tokenizer, vocab_size + 3, "cpu", words_only=True)[vocab_size:].any()


def test_pez_keeps_every_token_but_the_special_ones(tokenizer):
    """PEZ's prompts (and so the paper's) use the whole vocabulary; only hard DIFF tokens are words only."""
    usable = usable_token_mask(tokenizer, len(tokenizer), "cpu")
    assert usable.sum() == len(tokenizer) - len(specials(tokenizer) & set(range(len(tokenizer))))
    assert not usable[sorted(specials(tokenizer))].any()


def test_words_of_usable_tokens_tokenize_back_to_the_same_ids(tokenizer):
    """Any sequence of usable tokens, punctuation next to punctuation included, is text that the
    tokenizer turns back into exactly those ids; it is what `decode` gives, without U+FFFD."""
    usable = usable_token_mask(tokenizer, len(tokenizer), "cpu", words_only=True).nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(0)
    for length in [1, 2, 3, 5, 8, 16] * 40:
        ids = usable[torch.randint(len(usable), (length,), generator=generator)].tolist()
        text = token_words(tokenizer, ids)
        assert "\ufffd" not in text and len(text.split(" ")) == length
        assert tokenizer(text, add_special_tokens=False).input_ids == ids, (ids, text)
        assert text == tokenizer.decode(ids)
    everything = usable.tolist()
    assert tokenizer(token_words(tokenizer, everything), add_special_tokens=False).input_ids == everything


def test_projection_is_vocabulary_rows_and_never_special(backbone):
    vocabulary = backbone.vocabulary.detach()
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], vocabulary.device)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(64, vocabulary.shape[1], generator=generator) * vocabulary.std()
    # Aim some embeddings straight at the special tokens: the projection must still avoid them.
    special = sorted(specials(backbone.tokenizer))
    embeddings[: len(special)] = vocabulary[special]
    projected, ids = project_straight_through(embeddings, vocabulary, usable)
    assert projected.shape == embeddings.shape
    # straight-through value e + (v − e).detach(): the vocabulary row up to float rounding
    assert torch.allclose(projected, vocabulary[ids], rtol=0, atol=1e-6)
    assert not set(ids.tolist()) & set(special)
    # without the mask the nearest token of a special token's own embedding is itself
    assert nearest_token_ids(vocabulary[special], vocabulary).tolist() == special


def test_projection_picks_the_nearest_in_cosine(backbone):
    vocabulary = backbone.vocabulary.detach()
    chosen = torch.tensor([5, 100, 321, 600])
    # scaled and slightly perturbed copies of vocabulary rows project back onto those rows
    embeddings = 3.0 * vocabulary[chosen] + 1e-4 * torch.randn(
        4, vocabulary.shape[1], generator=torch.Generator().manual_seed(1)
    )
    _, ids = project_straight_through(embeddings, vocabulary)
    assert ids.tolist() == chosen.tolist()


def test_gradient_passes_straight_through(backbone):
    vocabulary = backbone.vocabulary.detach()
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], vocabulary.device)
    embeddings = torch.randn(5, vocabulary.shape[1], generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    projected, _ = project_straight_through(embeddings, vocabulary, usable)
    upstream = torch.randn(projected.shape, generator=torch.Generator().manual_seed(3))
    projected.backward(upstream)
    assert torch.equal(embeddings.grad, upstream)


def test_invert_prompt_returns_a_deterministic_string(clip, images):
    def run(seed):
        return invert_prompt(
            clip, [images["a"]], prompt_len=4, steps=3, generator=torch.Generator().manual_seed(seed), progress=False
        )

    first = run(0)
    assert isinstance(first, str) and first.strip() == first and len(first) > 0
    assert run(0) == first, "the same seed gives the same prompt"


def test_invert_prompt_with_zero_steps_decodes_its_start(clip, images):
    """steps=0: the prompt is the start, drawn uniformly from the usable tokens with the generator."""
    length, vocab_size = 6, clip.vocabulary.shape[0]
    prompt = invert_prompt(
        clip, [images["a"]], prompt_len=length, steps=0, generator=torch.Generator().manual_seed(4), progress=False
    )
    candidates = usable_token_mask(clip.tokenizer, vocab_size, "cpu").nonzero().squeeze(1)
    drawn = candidates[torch.randint(len(candidates), (length,), generator=torch.Generator().manual_seed(4))]
    assert prompt == clip.tokenizer.decode(drawn.tolist(), skip_special_tokens=True).strip()
    starts = random_token_ids(clip.tokenizer, vocab_size, (2, length), torch.Generator().manual_seed(4))
    assert torch.equal(starts[0], drawn), "random_token_ids draws the same way"
    assert torch.equal(
        invert_prompts(clip, [[images["a"]], [images["b"]]], starts, steps=0, progress=False).ids, starts
    )


def test_pez_score_rises_over_its_steps(clip, images):
    """The optimisation moves: after 20 AdamW steps each prompt's best score is strictly above its
    start's (steps=0 scores the start alone), and its tokens changed."""
    starts = random_token_ids(clip.tokenizer, clip.vocabulary.shape[0], (2, 8), torch.Generator().manual_seed(0))
    targets = [[images["a"]], [images["a_prime"], images["b"]]]
    start = invert_prompts(clip, targets, starts, steps=0, progress=False)
    fitted = invert_prompts(clip, targets, starts, steps=20, progress=False)
    assert start.scores.shape == fitted.scores.shape == (2,)
    assert (fitted.scores > start.scores + 0.05).all(), (start.scores, fitted.scores)
    assert (fitted.ids != starts).any(dim=1).all()
    # the score: mean cosine between the prompt's CLIP text feature and its images' features
    with torch.no_grad():
        texts = clip.slot_features(clip.vocabulary[fitted.ids])
    for k, images_k in enumerate(targets):
        expected = (clip.image_features(images_k) @ texts[k]).mean()
        assert fitted.scores[k].item() == pytest.approx(expected.item(), abs=1e-4)


def test_batched_inversion_equals_solo_inversions(clip, images):
    """K prompts in one optimisation end where each ends alone from the same start."""
    starts = random_token_ids(clip.tokenizer, clip.vocabulary.shape[0], (3, 6), torch.Generator().manual_seed(1))
    targets = [[images["a"]], [images["a_prime"]], [images["b"], images["a"]]]
    batched = invert_prompts(clip, targets, starts, steps=15, progress=False)
    assert batched.ids.shape == (3, 6) and len(batched.texts) == 3
    for k in range(3):
        solo = invert_prompts(clip, targets[k : k + 1], starts[k : k + 1], steps=15, progress=False)
        assert torch.equal(solo.ids[0], batched.ids[k]) and solo.texts[0] == batched.texts[k]
        assert solo.scores[0].item() == pytest.approx(batched.scores[k].item(), abs=1e-5)
    assert len(set(batched.texts)) == 3
    with pytest.raises(ValueError, match="2 image lists for 3"):
        invert_prompts(clip, targets[:2], starts, steps=0, progress=False)


def test_prompt_pair_is_one_batched_inversion_equal_to_two_solo_ones(clip, images, monkeypatch):
    config = fast_config(prompt_source="pez", pez_steps=5, pez_prompt_len=4)
    calls = []
    original = diffinv.inversion.invert_prompts

    def spy(clip_, targets, starts, *args, **kwargs):
        calls.append(starts.clone())
        return original(clip_, targets, starts, *args, **kwargs)

    monkeypatch.setattr(diffinv.inversion, "invert_prompts", spy)
    [pair] = prompt_pairs(
        clip, [(images["a"], images["a_prime"])], [("", "")], config, torch.Generator().manual_seed(3), False
    )
    assert len(calls) == 1 and calls[0].shape == (2, 4)
    # solo: A from the generator's first draw, A′ from its second
    generator = torch.Generator().manual_seed(3)
    solo = (
        pez_prompt(clip, images["a"], config, generator, False),
        pez_prompt(clip, images["a_prime"], config, generator, False),
    )
    assert pair == solo and torch.equal(calls[0], torch.cat(calls[1:]))


def test_analogy_inverts_a_a_prime_and_b_together_and_equals_fit_then_apply(di, images, monkeypatch):
    config = fast_config(steps=1, prompt_source="pez", pez_steps=4, pez_prompt_len=4)
    captions = (CAPTION_A, CAPTION_A_PRIME)
    batches = []
    original = diffinv.inversion.invert_prompts

    def spy(clip_, targets, starts, *args, **kwargs):
        batches.append(len(targets))
        return original(clip_, targets, starts, *args, **kwargs)

    monkeypatch.setattr(diffinv.inversion, "invert_prompts", spy)
    b_prime, tokens = di.analogy(
        images["a"], images["a_prime"], images["b"], config, seed=2, captions=captions, progress=False
    )
    assert batches == [3], "one inversion for prompt_A, prompt_A′ and prompt_B"

    batches.clear()
    fitted = di.fit(images["a"], images["a_prime"], config, captions=captions, seed=2, progress=False)
    separate = di.apply(fitted, images["b"], seed=2, progress=False)
    assert batches == [2, 1]
    assert (tokens.prompt_a, tokens.prompt_a_prime) == (fitted.prompt_a, fitted.prompt_a_prime)
    assert torch.equal(tokens.embeddings, fitted.embeddings)
    assert np.array_equal(np.asarray(b_prime), np.asarray(separate))

    batches.clear()
    di.analogy(
        images["a"], images["a_prime"], images["b"], config, seed=2, captions=captions, prompt_b="red", progress=False
    )
    assert batches == [2], "a given prompt_B leaves A and A′ to prepare"


def test_token_table_is_built_once_per_inversion(clip, images, monkeypatch):
    """The vocabulary is normalised once per inversion, not at every step."""
    built = []
    original = TokenTable.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TokenTable, "__init__", counting)
    starts = random_token_ids(clip.tokenizer, clip.vocabulary.shape[0], (2, 4), torch.Generator().manual_seed(0))
    invert_prompts(clip, [[images["a"]], [images["b"]]], starts, steps=6, progress=False)
    assert len(built) == 1


def test_harden_returns_vocabulary_rows_ids_and_text(backbone):
    vocabulary = backbone.vocabulary
    tokenizer = backbone.tokenizer
    embeddings = torch.randn(5, vocabulary.shape[1], generator=torch.Generator().manual_seed(5))
    rows, ids, text = harden(embeddings, vocabulary, tokenizer)
    assert isinstance(ids, list) and len(ids) == 5 and all(isinstance(i, int) for i in ids)
    assert rows.dtype == torch.float32 and not rows.requires_grad
    assert torch.equal(rows, vocabulary[ids].float())
    assert not set(ids) & specials(tokenizer)
    assert text == tokenizer.decode(ids)


def test_hard_tokens_are_never_pieces_that_are_no_words(tokenizer):
    """Embeddings aimed straight at byte pieces (and at random) harden to usable tokens only, whose
    words hold no U+FFFD and tokenize back to the same ids — never "re big _nto \ufffd"."""
    generator = torch.Generator().manual_seed(6)
    vocabulary = torch.randn(len(tokenizer), 16, generator=generator)
    pieces = by_token(tokenizer, *NOT_WORDS)
    embeddings = torch.cat([vocabulary[pieces], torch.randn(64, 16, generator=generator)])
    rows, ids, text = harden(embeddings, vocabulary, tokenizer)
    assert not set(ids) & set(pieces)
    assert usable_token_mask(tokenizer, len(tokenizer), "cpu", words_only=True)[ids].all()
    assert "\ufffd" not in text and len(text.split(" ")) == len(ids)
    assert tokenizer(text, add_special_tokens=False).input_ids == ids
    assert torch.equal(rows, vocabulary[ids])


def test_harden_of_word_embeddings_gives_those_words(backbone):
    tokenizer = backbone.tokenizer
    words = tokenizer("red circle", add_special_tokens=False).input_ids
    rows, ids, text = harden(2.0 * backbone.vocabulary[words].detach(), backbone.vocabulary, tokenizer)
    assert ids == words
    assert text.strip() == "red circle"
