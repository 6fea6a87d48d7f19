"""Self-attention sharing: B′ drawn on the layout of B's reconstruction.

While B is denoised twice side by side from its inversion — once under {prompt_B, 0}, which
reconstructs B, and once under {prompt_B, s·D̃}, which draws B′ — every self-attention layer of
the UNet can give B′'s rows the attention probabilities softmax(QKᵀ/√d) of B's rows. Each row
keeps its own values, so B′'s features are arranged where B's are (its layout) while the DIFF
tokens still change what they are, through cross-attention and the values. This is the
self-attention map injection of prompt-to-prompt (Hertz et al., 2022) and plug-and-play
(Tumanyan et al., 2023), used here over the first steps of the denoising.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class SharedSelfAttention:
    """A diffusers attention processor for self-attention layers (`attn1`) whose batch is
    [source rows | edited rows], two equal halves in the same order. While `active`, the edited
    rows use the source rows' attention probabilities; otherwise it is plain attention."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> torch.Tensor:  # fmt: skip
        """hidden_states (B, N, C) or (B, C, h, w) → the layer's output, of the same shape."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:
            batch, channels, height, width = image_shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(hidden_states))
        probabilities = attn.get_attention_scores(query, key, attention_mask)  # (B·heads, N, N), batch-major
        if self.active:
            source, _ = probabilities.chunk(2)
            probabilities = torch.cat([source, source])
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout

        if image_shape is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def sharing_self_attention(unet):
    """Within the block, every self-attention layer (`…attn1`) of `unet` runs a
    `SharedSelfAttention`, which is yielded (inactive: switch it on with `.active = True`); the
    UNet's own processors come back afterwards, whatever happens."""
    original = unet.attn_processors
    shared = SharedSelfAttention()
    unet.set_attn_processor(
        {name: shared if name.endswith("attn1.processor") else processor for name, processor in original.items()}
    )
    try:
        yield shared
    finally:
        unet.set_attn_processor(original)
