"""DIFF tokens for other tools: diffusers, AUTOMATIC1111 / ComfyUI, or plain words.

- `diffusers`: a safetensors file `{token: D̃ (n, d) float32}` that
  `StableDiffusionPipeline.load_textual_inversion(path, token="<diff>")` loads; a multi-vector
  embedding becomes the tokens `<diff>`, `<diff>_1`, …, `<diff>_{n-1}`, and the prompt word
  `<diff>` expands to all n of them, so "prompt_B <diff>" is exactly diffinv's `<bos> prompt_B
  <slot>×n <eos>`.
- `a1111`: a safetensors file `{"emb_params": D̃ (n, d) float32}`, the embedding layout
  AUTOMATIC1111's web UI and ComfyUI read for SD 1.x / 2.x (a single tensor of n vectors; the file
  name is the prompt word there). diffusers also loads it, given `token=`.
- `words`: the vocabulary words of hard DIFF tokens (fitted with `hard_tokens`), as plain text,
  one space between two: the model's tokenizer turns it back into exactly the hard token ids
  (`pez.token_words`; the projection picks only tokens whose text is such a word). Token files
  whose hard tokens include pieces that are no word (written before the projection skipped them:
  a byte of a multi-byte character, which decodes to U+FFFD, or a piece without `</w>`, which
  glues onto the next word, "_" + "nto" → "_nto") have no such text; their `words` export is
  refused (`words_text`) rather than written as text that would give the model other tokens.

SDXL tokens (two text encoders, D̃ = [D̃_l | D̃_g], n × (768 + 1280)) have one layout for both
`diffusers` and `a1111`: `{"clip_l": D̃_l (n, 768), "clip_g": D̃_g (n, 1280)}` float32, which
AUTOMATIC1111 and ComfyUI read for SDXL and which diffusers loads one encoder at a time:

    state = safetensors.torch.load_file(path)
    pipe.load_textual_inversion(state["clip_l"], "<diff>", pipe.tokenizer, pipe.text_encoder)
    pipe.load_textual_inversion(state["clip_g"], "<diff>", pipe.tokenizer_2, pipe.text_encoder_2)

The prompt word is then chosen at load time (`token=`), not stored in the file.

The exported D̃ is the fitted one, unscaled: an `edit_strength` s ≠ 1, `negative_diff` or
`diff_guidance` of the token file are sampling settings of diffinv that the other tools do not have.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checks import give_new_file_mode
from .errors import DiffinvError
from .tokens import DiffTokens

# format → the suffix its file must have
FORMATS = {"diffusers": ".safetensors", "a1111": ".safetensors", "words": ".txt"}
DEFAULT_TOKEN = "<diff>"
A1111_KEY = "emb_params"
XL_KEYS = ("clip_l", "clip_g")


def check_token(token: str) -> str:
    """The prompt word of a diffusers export: non-empty, one word (no whitespace)."""
    if not token or any(character.isspace() for character in token):
        raise DiffinvError(f"--token must be one word without spaces, got {token!r}")
    return token


def _vectors(tokens: DiffTokens) -> torch.Tensor:
    return tokens.embeddings.detach().float().cpu().contiguous()


def _metadata(tokens: DiffTokens, layout: str) -> dict[str, str]:
    from . import __version__

    return {
        "exported_by": f"diffinv {__version__}",
        "layout": layout,
        "model_id": tokens.model_id,
        "n_tokens": str(tokens.n_tokens),
        "token_width": str(tokens.token_width),
    }


def xl_state_dict(tokens: DiffTokens) -> dict[str, torch.Tensor]:
    """`{"clip_l": D̃[:, :d₁], "clip_g": D̃[:, d₁:]}` float32 for SDXL tokens: encoder 1's (ViT-L) and
    encoder 2's (ViT-bigG) columns, the SDXL embedding layout of AUTOMATIC1111 / ComfyUI."""
    vectors = _vectors(tokens)
    width_l = tokens.encoder_widths[0]
    return {XL_KEYS[0]: vectors[:, :width_l].contiguous(), XL_KEYS[1]: vectors[:, width_l:].contiguous()}


def diffusers_state_dict(tokens: DiffTokens, token: str = DEFAULT_TOKEN) -> dict[str, torch.Tensor]:
    """`{token: D̃}` with D̃ (n, d) float32: diffusers' one-key textual-inversion layout (SDXL:
    `xl_state_dict`, loaded one encoder at a time)."""
    check_token(token)
    return xl_state_dict(tokens) if tokens.family == "sdxl" else {token: _vectors(tokens)}


def a1111_state_dict(tokens: DiffTokens) -> dict[str, torch.Tensor]:
    """`{"emb_params": D̃}` with D̃ (n, d) float32: AUTOMATIC1111's / ComfyUI's safetensors layout
    (SDXL: `xl_state_dict`)."""
    return xl_state_dict(tokens) if tokens.family == "sdxl" else {A1111_KEY: _vectors(tokens)}


def words_text(tokens: DiffTokens, tokenizer=None) -> str:
    """The hard DIFF tokens' words, one line. `DiffinvError` for soft tokens, which have none, and for
    hard tokens whose text does not give their ids back: it holds U+FFFD (a byte of a character) or
    fewer words than tokens (a piece glued onto the next word) — or, given the model's `tokenizer`,
    tokenizes to other ids."""
    if not tokens.hard_text:
        raise DiffinvError(
            "these DIFF tokens are soft (free vectors), so they have no words; fit with --hard-tokens to get "
            "words, or export them with --format diffusers or a1111"
        )
    text, ids = tokens.hard_text, tokens.hard_token_ids
    faithful = "\ufffd" not in text and (ids is None or len(text.split()) == len(ids))
    if faithful and tokenizer is not None and ids is not None:
        faithful = tokenizer(text, add_special_tokens=False).input_ids == list(ids)
    if not faithful:
        count = f"{len(ids)} hard tokens" if ids is not None else "hard tokens"
        raise DiffinvError(
            f"no text gives back these {count}: their words {text!r} hold pieces of words or of characters, "
            "which an older diffinv could pick; export them with --format diffusers or a1111, or fit them again"
        )
    return text + "\n"


def export(
    tokens: DiffTokens, format: str, path: str | os.PathLike, token: str = DEFAULT_TOKEN, tokenizer=None
) -> None:
    """Write `tokens` to `path` in `format` (one of `FORMATS`), with a new file's mode (safetensors
    alone leaves 0o600). tokenizer: the model's, to check the words of `words` against (optional)."""
    path = Path(path)
    if format == "diffusers":
        save_file(diffusers_state_dict(tokens, token), str(path), metadata=_metadata(tokens, "diffusers"))
    elif format == "a1111":
        save_file(a1111_state_dict(tokens), str(path), metadata=_metadata(tokens, "a1111"))
    elif format == "words":
        path.write_text(words_text(tokens, tokenizer), encoding="utf-8")
    else:
        raise DiffinvError(f"unknown export format {format!r}: use {', '.join(FORMATS)}")
    give_new_file_mode(path)


def combine(tokens: list[DiffTokens], weights: list[float]) -> DiffTokens:
    """D̃ = Σ wᵢ·D̃ᵢ over token files of the same shape (n, d) and model.

    The result keeps the first file's config, prompts, captions and measurements; it has no hard
    tokens (a weighted sum of vocabulary embeddings is no vocabulary embedding) and no loss history.
    """
    if not tokens or len(tokens) != len(weights):
        raise DiffinvError(f"give one weight per DIFF-token file: {len(tokens)} files, {len(weights)} weights")
    for weight in weights:
        if not math.isfinite(weight):
            raise DiffinvError(f"weights must be finite numbers, got {weight}")
    first = tokens[0]
    for index, other in enumerate(tokens[1:], start=1):
        if other.embeddings.shape != first.embeddings.shape:
            raise DiffinvError(
                f"cannot combine DIFF tokens of shape {tuple(other.embeddings.shape)} (file {index + 1}) with "
                f"{tuple(first.embeddings.shape)} (file 1): all files need the same number and width of tokens"
            )
        if other.model_id != first.model_id:
            raise DiffinvError(
                f"cannot combine DIFF tokens fitted on {other.model_id!r} (file {index + 1}) with tokens fitted "
                f"on {first.model_id!r} (file 1)"
            )
    total = sum(weight * t.embeddings.float() for weight, t in zip(weights, tokens))
    return dataclasses.replace(first, embeddings=total, hard_token_ids=None, hard_text="", history={})
