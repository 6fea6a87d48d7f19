"""Stable Diffusion XL as diffinv's backbone: two text encoders, pooled text and size conditioning.

SDXL conditions its UNet on the penultimate hidden states of two CLIP text encoders side by side
(encoder 1: OpenAI ViT-L/14's text tower, d₁ = 768; encoder 2: OpenCLIP ViT-bigG/14's, d₂ = 1280),
on encoder 2's projected `<eos>` feature (the pooled embedding) and on six size numbers
(original size, crop corner, target size). A DIFF token is therefore one (d₁ + d₂)-wide vector:
its first d₁ columns go into encoder 1 and its last d₂ into encoder 2, at the same slot positions
(both encoders share CLIP's BPE vocabulary, so "prompt_B + slots" tokenizes alike). The pooled
embedding comes out of encoder 2 with the DIFF tokens in its input, so it sees them too.

The CLIP loss works in one joint space, ViT-bigG's, whose text tower *is* encoder 2: it sees the
d₂ columns of D̃ (`clip_dims`). Encoder 1's d₁ columns have no CLIP loss and are shaped by the
token consistency loss alone. Giving them one too would need a second CLIP (ViT-L/14) with a
second target direction D_inter measured in another joint space, and the two targets would pull
one token towards two unrelated spaces; the UNet reads both halves together, so L_tc already
ties encoder 1's half to what encoder 2's half does.

Size and crop conditioning follow the pipeline: original size = target size = the image's size,
crop corner (0, 0) — for the token consistency loss (as diffusers' SDXL training scripts do for
uncropped images) and for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from .. import sampling  # the module, as in `sd`: it imports this package
from ..config import DrawSettings, check_sampling_mode
from ..errors import DiffinvError
from .sd import StableDiffusionBackbone
from .text_slots import replaced_token_embeddings, slot_token_ids


@dataclass
class XLTextStates:
    """SDXL's text conditioning for a batch of B prompts.

    hidden: (B, L, d₁ + d₂), both encoders' penultimate hidden states side by side.
    pooled: (B, p), encoder 2's projected `<eos>` feature (p = its projection width).
    """

    hidden: torch.Tensor
    pooled: torch.Tensor

    def to(self, dtype: torch.dtype) -> XLTextStates:
        return XLTextStates(self.hidden.to(dtype), self.pooled.to(dtype))

    def __len__(self) -> int:
        return self.hidden.shape[0]


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """Frozen components of a `StableDiffusionXLPipeline` (ε- or v-prediction).

    Text ids are (B, 2, L): row b holds prompt b tokenized by each tokenizer (they differ only in
    the padding id). DIFF tokens are (…, n, d₁ + d₂).
    """

    family = "sdxl"
    pipeline_class = StableDiffusionXLPipeline

    def __init__(self, pipe: StableDiffusionXLPipeline, model_id: str):
        if pipe.text_encoder is None or pipe.tokenizer is None:
            raise DiffinvError(
                f"{model_id!r} has only one text encoder (an SDXL refiner?); diffinv needs SDXL's two, as in "
                "stabilityai/stable-diffusion-xl-base-1.0"
            )
        if pipe.tokenizer.get_vocab() != pipe.tokenizer_2.get_vocab():
            raise DiffinvError(
                f"{model_id!r}: its two tokenizers have different vocabularies, which diffinv needs alike"
            )
        super().__init__(pipe, model_id)
        self.tokenizer_2 = pipe.tokenizer_2
        self.text_encoder_2 = pipe.text_encoder_2
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        self._img2img: StableDiffusionXLImg2ImgPipeline | None = None

    # --- facts about the model -------------------------------------------------------------
    @property
    def encoder_widths(self) -> tuple[int, int]:
        """(d₁, d₂): token widths of encoder 1 and encoder 2."""
        return (
            self.text_encoder.get_input_embeddings().embedding_dim,
            self.text_encoder_2.get_input_embeddings().embedding_dim,
        )

    @property
    def token_width(self) -> int:
        """d₁ + d₂ (2048 for SDXL base)."""
        return sum(self.encoder_widths)

    @property
    def vocabulary(self) -> torch.Tensor:
        """(V, d₁ + d₂): both encoders' token embeddings side by side (built on each call; used for
        hard tokens and random starts, where a vocabulary token means the same id in both)."""
        self._text_weights_on_device()
        return torch.cat(
            [self.text_encoder.get_input_embeddings().weight, self.text_encoder_2.get_input_embeddings().weight],
            dim=1,
        )

    @property
    def clip_vocabulary(self) -> torch.Tensor:
        """Encoder 2's (V, d₂) table: CLIP's text tower for the loss is ViT-bigG's, i.e. encoder 2."""
        self._text_weights_on_device()
        return self.text_encoder_2.get_input_embeddings().weight

    @property
    def clip_dims(self) -> slice:
        return slice(self.encoder_widths[0], None)

    @property
    def sequence_length(self) -> int:
        return min(
            self.tokenizer.model_max_length,
            self.text_encoder.config.max_position_embeddings,
            self.text_encoder_2.config.max_position_embeddings,
        )

    # --- text ------------------------------------------------------------------------------
    def slot_ids(self, prompts: list[str], n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, 2, L), slot_mask (B, L)) for `prompts` followed by `n_slots` DIFF-token slots,
        tokenized for encoder 1 and encoder 2."""
        ids_1, mask_1 = slot_token_ids(self.tokenizer, prompts, n_slots, self.sequence_length)
        ids_2, mask_2 = slot_token_ids(self.tokenizer_2, prompts, n_slots, self.sequence_length)
        if not torch.equal(mask_1, mask_2):  # same vocabulary and merges, so never; but the slots must agree
            raise DiffinvError("SDXL's two tokenizers put the DIFF-token slots at different positions")
        return torch.stack([ids_1, ids_2], dim=1).to(self.device), mask_1.to(self.device)

    def _encode(self, ids: torch.Tensor, slot_mask: torch.Tensor | None, diff: torch.Tensor | None) -> XLTextStates:
        width_1 = self.encoder_widths[0]
        hidden, pooled = [], None
        for index, encoder in enumerate((self.text_encoder, self.text_encoder_2)):
            values = None if diff is None else (diff[..., :width_1] if index == 0 else diff[..., width_1:])
            if values is None:
                output = encoder(ids[:, index], output_hidden_states=True)
            else:
                with replaced_token_embeddings(encoder, slot_mask, values):
                    output = encoder(ids[:, index], output_hidden_states=True)
            hidden.append(output.hidden_states[-2])  # the penultimate layer, as the pipeline (clip_skip=None)
            if index == 1:
                pooled = output.text_embeds
        return XLTextStates(torch.cat(hidden, dim=-1), pooled)

    def encode_prompt(self, ids: torch.Tensor, slot_mask: torch.Tensor, diff: torch.Tensor) -> XLTextStates:
        """States of `ids` (B, 2, L) with `diff` — (B, n, d₁ + d₂) or (n, d₁ + d₂) — at the slots:
        hidden (B, L, d₁ + d₂) and pooled (B, p). Differentiable in `diff`."""
        return self._encode(ids, slot_mask, diff)

    def encode_plain(self, prompts: list[str]) -> XLTextStates:
        """States of plain prompts, as `StableDiffusionXLPipeline.encode_prompt` makes them."""
        ids = [
            tokenizer(
                prompts, padding="max_length", max_length=self.sequence_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tokenizer in (self.tokenizer, self.tokenizer_2)
        ]
        return self._encode(torch.stack(ids, dim=1).to(self.device), None, None)

    def unconditional_states(self) -> XLTextStates:
        """SDXL base zeroes the unconditional branch (`force_zeros_for_empty_prompt`); else the
        empty prompt's states, as the pipeline does."""
        if self.pipe.config.get("force_zeros_for_empty_prompt", True):
            empty = self.encode_plain([""])
            return XLTextStates(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))
        return self.encode_plain([""])

    @staticmethod
    def stack_states(states: list[XLTextStates]) -> XLTextStates:
        return XLTextStates(torch.cat([s.hidden for s in states]), torch.cat([s.pooled for s in states]))

    # --- latents and the denoiser ------------------------------------------------------------
    def _vae_in_float32(self) -> bool:
        """SDXL's VAE overflows in float16 (`force_upcast`): the pipeline runs it in float32 then."""
        return self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Scaled VAE latents (B, C, H/f, W/f), the posterior mean (see the SD backbone)."""
        if not self._vae_in_float32():
            return super().encode_images(images)
        self.vae.to(torch.float32)
        try:
            latents = self.vae.encode(self.to_pixels(images).float()).latent_dist.mean
        finally:
            self.vae.to(torch.float16)
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        if not self._vae_in_float32():
            return super().decode_latents(latents)
        self.vae.to(torch.float32)
        try:
            decoded = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        finally:
            self.vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(decoded, output_type="pil")

    def time_ids(self, height: int, width: int, rows: int) -> torch.Tensor:
        """(rows, 6): original size, crop corner (0, 0) and target size of a `height` × `width`
        image, as the pipeline builds them when it is given none."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)
        return ids.expand(rows, -1)

    def predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, text_states: XLTextStates, image_latents: None = None
    ) -> torch.Tensor:
        """UNet output (B, C, h, w) for noisy latents, integer timesteps (B,) and text states of B rows
        (image_latents: None, as `pair_conditioning` gives for a text-to-image model)."""
        height, width = (side * self.pipe.vae_scale_factor for side in noisy.shape[-2:])
        added = {"text_embeds": text_states.pooled, "time_ids": self.time_ids(height, width, noisy.shape[0])}
        return self.unet(noisy, timesteps, encoder_hidden_states=text_states.hidden, added_cond_kwargs=added).sample

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        text_states: XLTextStates,
        size: tuple[int, int],
        init_image: Image.Image | None,
        settings: DrawSettings,
        generator: torch.Generator,
        progress: bool = True,
        negative_states: XLTextStates | None = None,
        invert_states: XLTextStates | None = None,
    ) -> Image.Image:
        """Draw one image of `size` (width, height) from `text_states` (one row), as the SD backbone
        does (from noise, SDEdit from `init_image`, or from its inversion under `invert_states`,
        with the same refusals); SDXL's pipelines get the pooled embeddings beside the hidden states."""
        check_sampling_mode(settings.mode, self.model_id, self.takes_instructions)
        if settings.inversion is not None:
            return sampling.from_inversion(
                self, text_states, init_image, invert_states, negative_states, settings, generator, progress
            )
        sampling.check_inversion_options(settings)
        width, height = size
        common = dict(
            prompt_embeds=text_states.hidden.to(self.dtype),
            pooled_prompt_embeds=text_states.pooled.to(self.dtype),
            guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.steps,
            generator=generator,
        )
        if negative_states is not None:
            common["negative_prompt_embeds"] = negative_states.hidden.to(self.dtype)
            common["negative_pooled_prompt_embeds"] = negative_states.pooled.to(self.dtype)
        if settings.mode == "noise":
            pipe = self.pipe
            pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
            return pipe(height=height, width=width, **common).images[0]
        if init_image is None:
            raise DiffinvError("img2img draws B′ from B: it needs the image")
        if self._img2img is None:
            self._img2img = StableDiffusionXLImg2ImgPipeline(
                **self.pipe.components,
                requires_aesthetics_score=False,  # a base model's UNet takes the six size numbers, not a score
                force_zeros_for_empty_prompt=self.pipe.config.get("force_zeros_for_empty_prompt", True),
                add_watermarker=getattr(self.pipe, "watermark", None) is not None,
            )
        pipe = self._img2img
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
        return pipe(image=init_image, strength=settings.strength, **common).images[0]
