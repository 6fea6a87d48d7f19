"""PEZ: nearest-token projection with a straight-through gradient, hard prompts, `harden`."""

import torch

from diffinv.pez import harden, invert_prompt, nearest_token_ids, project_straight_through, usable_token_mask


def specials(tokenizer) -> set[int]:
    return {
        i
        for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
        if i is not None
    }


def test_usable_mask_excludes_exactly_the_special_tokens(backbone):
    vocabulary = backbone.vocabulary
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], vocabulary.device)
    excluded = set((~usable).nonzero().squeeze(1).tolist())
    assert excluded == specials(backbone.tokenizer)
    assert backbone.tokenizer.bos_token_id in excluded and backbone.tokenizer.eos_token_id in excluded


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
    prompt = invert_prompt(
        clip, [images["a"]], prompt_len=3, steps=0, generator=torch.Generator().manual_seed(4), progress=False
    )
    assert isinstance(prompt, str) and len(prompt) > 0


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


def test_harden_of_word_embeddings_gives_those_words(backbone):
    tokenizer = backbone.tokenizer
    words = tokenizer("red circle", add_special_tokens=False).input_ids
    rows, ids, text = harden(2.0 * backbone.vocabulary[words].detach(), backbone.vocabulary, tokenizer)
    assert ids == words
    assert text.strip() == "red circle"
