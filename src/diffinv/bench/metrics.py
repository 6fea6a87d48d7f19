"""Scores of one B′: the directional similarity of the paper, and ground-truth scores.

Directional score (Sec. 5): cos(E(A′) − E(A), E(B′) − E(B)) for an image embedder E — CLIP and
DINOv2 in the paper, any callable `images → (B, D)` features here. Embeddings are L2-normalised
before the differences are taken (as CLIP-directional scores usually are), and a zero change
(B′ = B) scores 0.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DiffinvError
from ..images import centre_crops


class Embedder(Protocol):
    name: str

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, D) features of RGB images."""


class ClipEmbedder:
    """Image features of a `ClipSpace` (the model's own CLIP by default)."""

    def __init__(self, clip, name: str = "clip"):
        self.clip, self.name = clip, name

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.clip.image_features(images)


def check_dinov2_source(model_id: str) -> None:
    """A DINOv2 given as a path must be a directory (hub ids are owner/name; checked when loaded)."""
    looks_local = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(model_id)):
        raise DiffinvError(f"{model_id}: no such DINOv2 model directory")


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Dinov2Embedder:
    """The CLS feature of a transformers `Dinov2Model` (e.g. facebook/dinov2-base), with DINOv2's
    evaluation transform: shorter side to 256 (bicubic), centre crop 224, ImageNet normalisation."""

    def __init__(self, model, name: str = "dinov2", resize: int = 256, crop: int = 224):
        self.model, self.name, self.resize, self.crop = model.eval(), name, resize, crop

    @classmethod
    def from_pretrained(
        cls, model_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Dinov2Embedder:
        from transformers import Dinov2Model

        check_dinov2_source(model_id)
        try:
            model = Dinov2Model.from_pretrained(model_id, dtype=dtype)
        except (OSError, ValueError) as error:
            raise DiffinvError(f"could not load the DINOv2 model {model_id!r}: {str(error).splitlines()[0]}") from None
        return cls(model.to(device))

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.from_numpy(centre_crops(images, self.resize, self.crop)).permute(0, 3, 1, 2)
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((pixels - mean) / std).to(self.model.device, self.model.dtype)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model(pixel_values=self.pixels(images)).pooler_output.float()


def directional_score(
    embedder: Embedder, a: Image.Image, a_prime: Image.Image, b: Image.Image, b_prime: Image.Image
) -> float:
    """cos(E(A′) − E(A), E(B′) − E(B)) on L2-normalised embeddings, in [−1, 1]."""
    features = F.normalize(embedder([a, a_prime, b, b_prime]).float(), dim=-1)
    return F.cosine_similarity(features[1] - features[0], features[3] - features[2], dim=0).item()


def similarity_to_truth(embedder: Embedder, b_prime: Image.Image, truth: Image.Image) -> float:
    """cos(E(B′), E(B′ true)): how close B′ is to the ground truth, when there is one."""
    features = F.normalize(embedder([b_prime, truth]).float(), dim=-1)
    return F.cosine_similarity(features[0], features[1], dim=0).item()
