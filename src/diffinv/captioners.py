"""Captioners: anything that turns images into one caption each.

The protocol is one call, `captioner(images) -> list[str]`. Captions given by the user bypass
captioners altogether (`DifferenceInversion.fit(..., captions=(cap_a, cap_a_prime))`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image

from .clip_space import ClipSpace
from .errors import DiffinvError

DEFAULT_BLIP2 = "Salesforce/blip2-opt-2.7b"


class Captioner(Protocol):
    def __call__(self, images: list[Image.Image]) -> list[str]: ...


class Blip2Captioner:
    """BLIP-2 through transformers (the paper's captioner). Loaded on first use: it is large."""

    def __init__(
        self,
        model: str = DEFAULT_BLIP2,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 30,
    ):
        self.model_name, self.device, self.dtype, self.max_new_tokens = model, device, dtype, max_new_tokens
        self._model = self._processor = None

    def _load(self) -> None:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self._processor = Blip2Processor.from_pretrained(self.model_name)
        self._model = Blip2ForConditionalGeneration.from_pretrained(self.model_name, dtype=self.dtype).to(self.device)
        self._model.requires_grad_(False).eval()

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        if self._model is None:
            self._load()
        inputs = self._processor(images=images, return_tensors="pt").to(self.device, self.dtype)
        generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [text.strip() for text in self._processor.batch_decode(generated, skip_special_tokens=True)]


class ClipRetrievalCaptioner:
    """Picks, for each image, the candidate caption with the highest CLIP similarity.

    Works offline with any CLIP; exact in a closed world (the shapes world) whose captions are
    all known.
    """

    def __init__(self, clip: ClipSpace, candidates: Sequence[str], batch_size: int = 256):
        if not candidates:
            raise DiffinvError("the CLIP-retrieval captioner needs at least one candidate caption")
        self.clip, self.candidates = clip, list(candidates)
        features = [
            clip.text_features(self.candidates[i : i + batch_size]) for i in range(0, len(self.candidates), batch_size)
        ]
        self.features = torch.cat(features)  # (K, D), computed once

    def __call__(self, images: list[Image.Image]) -> list[str]:
        best = (self.clip.image_features(images) @ self.features.T).argmax(dim=-1)
        return [self.candidates[i] for i in best.tolist()]
