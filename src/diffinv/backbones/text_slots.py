"""Putting learned embeddings into a CLIP text encoder's input.

A prompt with learned tokens is tokenized as

    <bos> prompt … <slot_1> … <slot_n> <eos> <pad> …

and, while `replaced_token_embeddings` is active, the encoder's token-embedding layer outputs
the learned vectors at the slot positions instead of the embeddings of the slot ids. This uses
only `get_input_embeddings()` and a forward hook, so the encoder's weights are never touched and
the same code works for every transformers layout of CLIP.

The slot positions hold the `<bos>` id: CLIP pools its output at the first `<eos>` (or, in old
configs, at the largest id), so the slot id must be neither `<eos>` nor larger than it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def slot_token_ids(
    tokenizer, prompts: list[str], n_slots: int, length: int, return_attention_mask: bool = False
) -> tuple[torch.Tensor, ...]:
    """Token ids for `prompts`, each followed by `n_slots` learned-token slots.

    Returns `ids` (B, length) long and `slot_mask` (B, length) bool with exactly `n_slots` True
    per row; with `return_attention_mask` also the tokenizer-style `attention_mask` (B, length)
    long: 1 from `<bos>` up to and including `<eos>`, 0 on the padding after it. Prompts too long
    to leave room for the slots are truncated (the slots never are).
    """
    if n_slots + 2 > length:
        raise ValueError(f"{n_slots} learned tokens do not fit in a text sequence of {length}")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, _pad_id(tokenizer)
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    slot_mask = torch.zeros((len(prompts), length), dtype=torch.bool)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = tokenizer(prompt, add_special_tokens=False).input_ids[: length - 2 - n_slots]
        sequence = [bos, *words, *([bos] * n_slots), eos]
        ids[row, : len(sequence)] = torch.tensor(sequence)
        slot_mask[row, 1 + len(words) : 1 + len(words) + n_slots] = True
        attention_mask[row, : len(sequence)] = 1
    return (ids, slot_mask, attention_mask) if return_attention_mask else (ids, slot_mask)


def token_attention_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """The tokenizer's attention mask (B, L) long for padded ids (B, L): 1 up to and including the
    sequence's `<eos>`, 0 on the padding after it — what diffusers' `StableDiffusionPipeline` gives
    a text encoder whose config sets `use_attention_mask`.

    Padding is the run of pad ids at the end of a row. Where the pad id is the `<eos>` id (SD's
    CLIP tokenizers), the first id of that run is the sequence's own `<eos>` and stays visible;
    `ids != pad_token_id` would hide it.
    """
    pad = _pad_id(tokenizer)
    trailing = (ids == pad).flip(-1).long().cumprod(-1).flip(-1).bool()  # this and every later id is pad
    padding = trailing.clone()
    if pad == tokenizer.eos_token_id:
        padding[:, 0] = False
        padding[:, 1:] = trailing[:, 1:] & trailing[:, :-1]
    return (~padding).long()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@contextmanager
def replaced_token_embeddings(text_model: nn.Module, slot_mask: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """While active, `text_model`'s token embeddings at `slot_mask` are `values`.

    slot_mask: (B, L) bool, k True per row. values: (B, k, d) or (k, d) (shared by all rows).
    Gradients flow from the encoder's output back into `values`.
    """
    embedding = text_model.get_input_embeddings()
    rows = slot_mask.shape[0]
    flat = values.expand(rows, *values.shape[-2:]) if values.dim() == 2 else values

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[slot_mask.to(output.device)] = flat.reshape(-1, flat.shape[-1]).to(output.dtype)
        return output

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
