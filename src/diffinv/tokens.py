"""`DiffTokens`: learned DIFF tokens and everything needed to use them, in one safetensors file.

File layout: one tensor `diff_tokens` (n, d) float32, plus string metadata:
`format` ("diffinv.diff-tokens/1"), `model_id`, `token_width`, `vocab_size`, `n_tokens`,
`alpha`, `prompt_a`, `prompt_a_prime`, `caption_a`, `caption_a_prime`, `config` (JSON),
`hard_token_ids` (JSON list or ""), `hard_text`, `history` (JSON of the loss curves),
`text_delta_norm` and `effective_alpha` (numbers, or "" where unknown), `family` ("sd" for
SD 1.x / 2.x, "sdxl": whose text encoders the tokens condition), `encoder_widths` (JSON [d₁, d₂]
for SDXL, else ""), `n_pairs` (how many example pairs of the edit D̃ was fitted on), `diffinv_version`.
Files written before `text_delta_norm` / `effective_alpha` existed load with both None; files
written before `family` existed are SD 1.x / 2.x ones (diffinv had no other backbone then), and
those written before `n_pairs` existed were fitted on one pair.
safetensors holds no code, so loading a file cannot run any.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .checks import give_new_file_mode
from .config import InversionConfig
from .errors import DiffinvError, DiffinvWarning

FORMAT = "diffinv.diff-tokens/1"
FAMILY_NAMES = {"sd": "SD 1.x / 2.x", "sdxl": "SDXL"}


@dataclass
class DiffTokens:
    """DIFF tokens D̃ learned from one pair (A, A′), or from several example pairs of one edit.

    embeddings: (n, d) float32 on the CPU, in the text encoder's token-embedding space.
    hard_token_ids / hard_text: the vocabulary tokens D̃ was projected onto, when fitted with
    `hard_tokens=True` (usable as plain words with any model sharing the tokenizer).
    text_delta_norm: ‖D_T‖ of the captions (None: not computed, or an older file).
    effective_alpha: the α D_inter was built with — `config.alpha`, or 0 where the text delta was
    degenerate and the image delta was used alone (None: an older file).
    family: the backbone family, "sd" (SD 1.x / 2.x: one text encoder, d wide) or "sdxl" (two:
    d = d₁ + d₂, encoder 1's columns first).
    encoder_widths: (d₁, d₂) for SDXL tokens, None for SD 1.x / 2.x.
    n_pairs: how many example pairs (A, A′) of the edit D̃ was fitted on; the prompts and captions
        are the first pair's.
    encoder_check: with init="auto", whether D̃ is the DIFF-token encoder's or a fit, and why
        (`encoder_check.EncoderCheck.as_dict`: "accepted", "pixel", "clip", "tolerance"); else None.
    """

    embeddings: torch.Tensor
    model_id: str
    vocab_size: int
    config: InversionConfig
    prompt_a: str = ""
    prompt_a_prime: str = ""
    caption_a: str = ""
    caption_a_prime: str = ""
    hard_token_ids: list[int] | None = None
    hard_text: str = ""
    history: dict[str, list[float]] = field(default_factory=dict)
    text_delta_norm: float | None = None
    effective_alpha: float | None = None
    family: str = "sd"
    encoder_widths: tuple[int, int] | None = None
    n_pairs: int = 1
    encoder_check: dict | None = None

    def __post_init__(self):
        if self.family not in FAMILY_NAMES:
            raise DiffinvError(f"unknown model family {self.family!r}")
        if (self.family == "sdxl") != (self.encoder_widths is not None):
            raise DiffinvError("SDXL DIFF tokens need their two encoders' widths, other tokens none")
        if self.encoder_widths is not None:
            self.encoder_widths = tuple(int(width) for width in self.encoder_widths)
            if sum(self.encoder_widths) != self.embeddings.shape[-1]:
                raise DiffinvError(
                    f"encoder widths {self.encoder_widths} do not add up to the token width "
                    f"{self.embeddings.shape[-1]}"
                )

    @property
    def n_tokens(self) -> int:
        return self.embeddings.shape[0]

    @property
    def token_width(self) -> int:
        return self.embeddings.shape[1]

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokens to `path` (a new file's mode, as `open` would give it)."""
        from . import __version__

        metadata = {
            "format": FORMAT,
            "model_id": self.model_id,
            "token_width": str(self.token_width),
            "vocab_size": str(self.vocab_size),
            "n_tokens": str(self.n_tokens),
            "alpha": str(self.config.alpha),
            "prompt_a": self.prompt_a,
            "prompt_a_prime": self.prompt_a_prime,
            "caption_a": self.caption_a,
            "caption_a_prime": self.caption_a_prime,
            "config": self.config.to_json(),
            "hard_token_ids": json.dumps(self.hard_token_ids) if self.hard_token_ids is not None else "",
            "hard_text": self.hard_text,
            "history": json.dumps(self.history),
            "text_delta_norm": _number_text(self.text_delta_norm),
            "effective_alpha": _number_text(self.effective_alpha),
            "family": self.family,
            "encoder_widths": json.dumps(list(self.encoder_widths)) if self.encoder_widths else "",
            "n_pairs": str(self.n_pairs),
            "encoder_check": json.dumps(self.encoder_check) if self.encoder_check is not None else "",
            "diffinv_version": __version__,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"diff_tokens": self.embeddings.detach().float().cpu().contiguous()}, str(path), metadata=metadata)
        give_new_file_mode(path)  # safetensors leaves its private temporary file's 0o600

    @classmethod
    def load(cls, path: str | os.PathLike) -> DiffTokens:
        """Read a file written by `save`; raise `DiffinvError` if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise DiffinvError(f"{path}: no such token file" if not path.exists() else f"{path}: not a file")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise DiffinvError(f"{path}: not a safetensors DIFF-token file ({error})") from None
        if metadata.get("format") != FORMAT or "diff_tokens" not in tensors:
            raise DiffinvError(f"{path}: a safetensors file, but not DIFF tokens written by diffinv")
        try:
            hard_ids = metadata.get("hard_token_ids", "")
            return cls(
                embeddings=tensors["diff_tokens"].float(),
                model_id=metadata["model_id"],
                vocab_size=int(metadata["vocab_size"]),
                config=InversionConfig.from_json(metadata["config"]),
                prompt_a=metadata.get("prompt_a", ""),
                prompt_a_prime=metadata.get("prompt_a_prime", ""),
                caption_a=metadata.get("caption_a", ""),
                caption_a_prime=metadata.get("caption_a_prime", ""),
                hard_token_ids=json.loads(hard_ids) if hard_ids else None,
                hard_text=metadata.get("hard_text", ""),
                history=json.loads(metadata.get("history") or "{}"),
                text_delta_norm=_number(metadata.get("text_delta_norm", "")),
                effective_alpha=_number(metadata.get("effective_alpha", "")),
                family=metadata.get("family", "sd"),
                encoder_widths=json.loads(metadata["encoder_widths"]) if metadata.get("encoder_widths") else None,
                n_pairs=int(metadata.get("n_pairs") or 1),
                encoder_check=json.loads(metadata["encoder_check"]) if metadata.get("encoder_check") else None,
            )
        except (KeyError, ValueError, DiffinvError) as error:
            raise DiffinvError(f"{path}: damaged DIFF-token metadata ({error})") from None

    def check_fits(self, model_id: str, token_width: int, vocab_size: int, family: str = "sd") -> None:
        """Raise `DiffinvError` if these tokens cannot condition that model's text encoder(s) — another
        family or width; warn if they were fitted on another model of the same family and width
        (often fine: fine-tunes share their base model's encoders)."""
        if family != self.family:
            raise DiffinvError(
                f"these DIFF tokens were fitted on an {FAMILY_NAMES[self.family]} model ({self.model_id!r}) and "
                f"cannot condition {model_id!r}, an {FAMILY_NAMES[family]} model; fit them again on this model"
            )
        if token_width != self.token_width:
            raise DiffinvError(
                f"these DIFF tokens are {self.token_width} wide (fitted on {self.model_id!r}) but the text "
                f"encoder of {model_id!r} takes {token_width}-wide tokens; fit them again on this model"
            )
        if vocab_size != self.vocab_size or model_id != self.model_id:
            warnings.warn(
                f"DIFF tokens were fitted on {self.model_id!r}, applying them to {model_id!r}",
                DiffinvWarning,
                stacklevel=2,
            )


def _number_text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _number(text: str) -> float | None:
    return float(text) if text else None
