"""Captioners: anything that turns images into one caption each.

The protocol is one call, `captioner(images) -> list[str]`. Captions given by the user bypass
captioners altogether (`DifferenceInversion.fit(..., captions=(cap_a, cap_a_prime))`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from PIL import Image

from .clip_space import ClipSpace
from .errors import DiffinvError

DEFAULT_BLIP2 = "Salesforce/blip2-opt-2.7b"


class Captioner(Protocol):
    def __call__(self, images: list[Image.Image]) -> list[str]: ...


class Blip2Captioner:
    """BLIP-2 through transformers (the paper's captioner).

    Loaded on first use, since it is large (3.9 B parameters for blip2-opt-2.7b), and freed
    after each call unless `keep_loaded` (the benchmark runner keeps it for many triplets):
    captioning happens once per fit, before the UNet needs the memory.
    local_files_only: use the hub cache only; a missing model is then one clear error.
    """

    def __init__(
        self,
        model: str = DEFAULT_BLIP2,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 30,
        local_files_only: bool = False,
        keep_loaded: bool = False,
        make_room: Callable[[], None] | None = None,
    ):
        self.model_name, self.device, self.dtype, self.max_new_tokens = model, device, dtype, max_new_tokens
        self.local_files_only, self.keep_loaded = local_files_only, keep_loaded
        # Called before loading, to free the device for BLIP-2 (low memory: the other models to the CPU).
        self.make_room = make_room
        self._model = self._processor = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        try:
            self._processor = Blip2Processor.from_pretrained(self.model_name, local_files_only=self.local_files_only)
            self._model = Blip2ForConditionalGeneration.from_pretrained(
                self.model_name, dtype=self.dtype, local_files_only=self.local_files_only
            ).to(self.device)
        except (OSError, ValueError):  # not found, or not even a valid hub id
            where = "in the hub cache (offline)" if self.local_files_only else "in the hub cache or on the hub"
            raise DiffinvError(
                f"the captioner {self.model_name} (BLIP-2) is not {where}; give the captions instead "
                "(--caption-a/--caption-a-prime, and --prompt for B) "
                "or caption by CLIP retrieval (--captions-from FILE)"
            ) from None
        self._model.requires_grad_(False).eval()

    def release(self) -> None:
        """Free the model's memory (it is loaded again on the next call)."""
        self._model = self._processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        if self._model is None:
            if self.make_room is not None:
                self.make_room()
            self._load()
        inputs = self._processor(images=images, return_tensors="pt").to(self.device, self.dtype)
        generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        captions = [text.strip() for text in self._processor.batch_decode(generated, skip_special_tokens=True)]
        if not self.keep_loaded:
            self.release()
        return captions


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
