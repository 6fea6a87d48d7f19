"""Learned-token slots in a CLIP text encoder's input: the ids layout and the embedding swap."""

import copy

import pytest
import torch

from diffinv.backbones.text_slots import replaced_token_embeddings, slot_token_ids, token_attention_mask


def words_of(tokenizer, prompt):
    return tokenizer(prompt, add_special_tokens=False).input_ids


@pytest.mark.parametrize("n_slots", [1, 3, 5])
def test_n_slots_right_after_the_prompt_then_eos_then_padding(backbone, n_slots):
    tokenizer = backbone.tokenizer
    prompts = ["a red circle", "", "a photo of a big blue house in the snow"]
    length = 20
    ids, mask = slot_token_ids(tokenizer, prompts, n_slots, length)
    assert ids.shape == mask.shape == (3, length)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for row, prompt in enumerate(prompts):
        words = words_of(tokenizer, prompt)
        assert mask[row].sum().item() == n_slots
        start = 1 + len(words)
        assert ids[row, 0].item() == tokenizer.bos_token_id
        assert ids[row, 1:start].tolist() == words
        assert mask[row, start : start + n_slots].all()
        assert ids[row, start + n_slots].item() == tokenizer.eos_token_id
        assert (ids[row, start + n_slots + 1 :] == pad).all()
        # the slot id is neither <eos> nor larger than it (CLIP pools at the first/largest <eos>)
        assert (ids[row][mask[row]] != tokenizer.eos_token_id).all()
        assert (ids[row][mask[row]] < tokenizer.eos_token_id).all()


def test_long_prompt_is_truncated_never_the_slots(backbone):
    tokenizer = backbone.tokenizer
    prompt = "a photo of a big red circle and a small blue square in the snow at night"
    words = words_of(tokenizer, prompt)
    length, n_slots = 12, 5
    assert len(words) > length
    ids, mask = slot_token_ids(tokenizer, [prompt], n_slots, length)
    kept = length - 2 - n_slots
    assert ids[0, 1 : 1 + kept].tolist() == words[:kept]
    assert mask[0].sum().item() == n_slots
    assert mask[0, 1 + kept : 1 + kept + n_slots].all()
    assert ids[0, -1].item() == tokenizer.eos_token_id


def test_too_many_slots_for_the_sequence_raise(backbone):
    with pytest.raises(ValueError):
        slot_token_ids(backbone.tokenizer, ["a"], 9, 10)


def test_replaced_embeddings_change_the_output_and_carry_gradients(backbone):
    encoder = backbone.text_encoder
    ids, mask = slot_token_ids(backbone.tokenizer, ["a red circle", "a blue circle"], 2, 16)
    plain = encoder(ids).last_hidden_state
    values = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with replaced_token_embeddings(encoder, mask, values):
        changed = encoder(ids).last_hidden_state
    assert not torch.allclose(changed, plain)
    # causal attention: positions before the first slot are unaffected
    first_slot = mask[0].nonzero()[0].item()
    assert torch.allclose(changed[0, :first_slot], plain[0, :first_slot], atol=1e-6)
    changed.pow(2).sum().backward()
    assert values.grad is not None and values.grad.abs().sum() > 0
    assert encoder.get_input_embeddings().weight.grad is None
    # the hook is gone after the block
    assert torch.allclose(encoder(ids).last_hidden_state, plain)


def test_values_land_exactly_at_the_slots_per_row(backbone):
    encoder = backbone.text_encoder
    embedding = encoder.get_input_embeddings()
    ids, mask = slot_token_ids(backbone.tokenizer, ["a red circle", "a"], 3, 16)
    values = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1))
    seen = []
    with replaced_token_embeddings(encoder, mask, values):
        handle = embedding.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
        try:
            encoder(ids)
        finally:
            handle.remove()
    (output,) = seen
    for row in range(2):
        assert torch.equal(output[row][mask[row]], values[row])
        assert torch.equal(output[row][~mask[row]], embedding.weight[ids[row][~mask[row]]])


def pad_is_not_eos(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.pad_token = "!"
    assert other.pad_token_id not in (other.eos_token_id, other.bos_token_id)
    return other


@pytest.mark.parametrize("pad_is_eos", [True, False])
def test_attention_mask_is_the_tokenizers_up_to_and_including_eos(backbone, pad_is_eos):
    """As diffusers' pipeline passes it to text encoders with `use_attention_mask`: 1 up to and
    including <eos>, 0 on the padding. SD's CLIP tokenizers pad with <eos>, which `ids != pad`
    would hide."""
    tokenizer = backbone.tokenizer if pad_is_eos else pad_is_not_eos(backbone.tokenizer)
    assert (tokenizer.pad_token_id == tokenizer.eos_token_id) == pad_is_eos
    prompts = ["a photo of a red circle", "", "a big blue house in the snow at night and a small red car"]
    length = 12
    # without slots the ids are the tokenizer's own, and so must the mask be
    ids, _, mask = slot_token_ids(tokenizer, prompts, 0, length, return_attention_mask=True)
    reference = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    assert torch.equal(ids, reference.input_ids)
    assert torch.equal(mask, reference.attention_mask)
    assert torch.equal(token_attention_mask(tokenizer, ids), reference.attention_mask)
    # with slots: every slot and the <eos> after them are visible, the padding is not
    ids, slots, mask = slot_token_ids(tokenizer, prompts, 3, length, return_attention_mask=True)
    assert mask.dtype == torch.long
    for row in range(len(prompts)):
        eos = slots[row].nonzero().max().item() + 1
        assert ids[row, eos].item() == tokenizer.eos_token_id
        assert mask[row, : eos + 1].all() and not mask[row, eos + 1 :].any()
    assert mask[2].all(), "a full row has no padding"
    assert torch.equal(token_attention_mask(tokenizer, ids), mask)


def test_by_default_only_ids_and_slot_mask_are_returned(backbone):
    ids, slots = slot_token_ids(backbone.tokenizer, ["a red circle"], 2, 10)
    same_ids, same_slots, _ = slot_token_ids(backbone.tokenizer, ["a red circle"], 2, 10, return_attention_mask=True)
    assert torch.equal(ids, same_ids) and torch.equal(slots, same_slots)
