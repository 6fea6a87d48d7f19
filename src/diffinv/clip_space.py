"""CLIP's joint space: image and text embeddings, their deltas, and slerp between deltas.

All deltas of one run must live in one space, so the CLIP used here should be the one whose
text tower is the backbone's text encoder (SD 1.x: OpenAI ViT-L/14; SD 2.x: OpenCLIP ViT-H/14
trained on LAION-2B; SDXL: OpenCLIP ViT-bigG/14, its encoder 2). `default_clip_for` picks it from
the width of that text encoder's tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from .backbones.text_slots import replaced_token_embeddings
from .errors import DiffinvError
from .images import centre_crops

# The normalisation every OpenAI and OpenCLIP CLIP was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_CLIP_BY_TOKEN_WIDTH = {
    768: "openai/clip-vit-large-patch14",  # SD 1.x text encoder = this model's text tower
    1024: "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",  # SD 2.x text encoder = its text tower
    1280: "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",  # SDXL text encoder 2 = its text tower
}


def default_clip_for(token_width: int) -> str:
    """Hub id of the CLIP that matches a Stable Diffusion text encoder of this width."""
    try:
        return DEFAULT_CLIP_BY_TOKEN_WIDTH[token_width]
    except KeyError:
        raise DiffinvError(
            f"no default CLIP for a text encoder of width {token_width}; pass clip_model=… (--clip-model)"
        ) from None


class ClipSpace:
    """A frozen `CLIPModel` with its tokenizer; all features are L2-normalised, shape (B, D).

    Features are the `pooler_output` of `get_image_features` / `get_text_features`, which in
    transformers 5 is the embedding projected into the joint space.
    """

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer):
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        # Low memory on CUDA (`diffinv.memory.stage_offload`): the towers wait on the CPU until used.
        self.offload = None
        self.execution_device: torch.device | None = None

    @classmethod
    def from_pretrained(cls, name: str, device, dtype: torch.dtype, local_files_only: bool = False) -> ClipSpace:
        """A `CLIPModel` and its tokenizer by hub id or directory (`local_files_only`: cache only)."""
        model = CLIPModel.from_pretrained(name, dtype=dtype, local_files_only=local_files_only).to(device)
        return cls(model, CLIPTokenizer.from_pretrained(name, local_files_only=local_files_only))

    @property
    def device(self) -> torch.device:
        return self.execution_device or self.model.device

    @property
    def text_model(self):
        return self.model.text_model

    @property
    def joint_width(self) -> int:
        return self.model.config.projection_dim

    @property
    def vocabulary(self) -> torch.Tensor:
        """(V, d) token-embedding matrix of the text tower."""
        if self.offload is not None:  # read directly, not through a call: bring the weights
            self.offload.enter("text")
        return self.text_model.get_input_embeddings().weight

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, S, S): shorter side resized to S, centre crop, CLIP normalisation."""
        side = self.model.config.vision_config.image_size
        pixels = torch.from_numpy(centre_crops(images, side, side)).permute(0, 3, 1, 2)
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        return ((pixels - mean) / std).to(self.device, self.model.dtype)

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        output = self.model.get_image_features(pixel_values=self.pixels(images))
        return F.normalize(output.pooler_output.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        length = self.text_model.config.max_position_embeddings
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        output = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device))
        return F.normalize(output.pooler_output.float(), dim=-1)

    def slot_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Features of the prompts "<bos> e_1 … e_k <eos>", differentiable in `embeddings`.

        embeddings: (B, k, d) token embeddings of the text tower. Returns (B, D), normalised.
        Used by PEZ and by the "text-tower" CLIP loss.
        """
        rows, k = embeddings.shape[:2]
        # Built directly rather than through the tokenizer: this runs once per optimisation step.
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        ids = torch.tensor([bos] * (k + 1) + [eos], device=self.device).expand(rows, -1)
        mask = torch.zeros((rows, k + 2), dtype=torch.bool, device=self.device)
        mask[:, 1 : k + 1] = True
        with replaced_token_embeddings(self.text_model, mask, embeddings):
            output = self.model.get_text_features(input_ids=ids)
        return F.normalize(output.pooler_output.float(), dim=-1)

    def prompt_slot_features(self, ids: torch.Tensor, slot_mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Features of tokenized prompts `ids` (B, L) whose `slot_mask` (B, L) positions hold
        `values` (B, n, d) (see `text_slots.slot_token_ids`); differentiable in `values`.
        Returns (B, D), normalised. Used by the "in-context" CLIP loss."""
        with replaced_token_embeddings(self.text_model, slot_mask.to(self.device), values):
            output = self.model.get_text_features(input_ids=ids.to(self.device))
        return F.normalize(output.pooler_output.float(), dim=-1)


def delta(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """E(after) − E(before) of normalised features, (D,) from two (D,) or (1, D)."""
    return (after - before).reshape(-1)


def slerp(image_delta: torch.Tensor, text_delta: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of two directions (eq. 5): α = 0 → image delta, α = 1 → text delta.

    Both inputs are normalised first; the result is a unit vector. Where sin θ < eps slerp is
    numerically undefined: for θ ≈ 0 linear interpolation, which it approaches, is used; for
    opposite directions (θ ≈ π, no unique arc) the nearer endpoint is returned.
    """
    u = F.normalize(image_delta.float().reshape(-1), dim=0)
    v = F.normalize(text_delta.float().reshape(-1), dim=0)
    cosine = torch.dot(u, v)
    theta = torch.arccos(torch.clamp(cosine, -1.0, 1.0))
    if torch.sin(theta).item() < eps:
        mixed = (1 - alpha) * u + alpha * v if cosine > 0 else (u if alpha < 0.5 else v)
    else:
        mixed = (torch.sin((1 - alpha) * theta) * u + torch.sin(alpha * theta) * v) / torch.sin(theta)
    return F.normalize(mixed, dim=0)
