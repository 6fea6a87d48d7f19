"""The one place that knows diffusers: Stable Diffusion 1.x / 2.x as a small interface.

Difference Inversion needs five things from a text-to-image model: encode a prompt with DIFF
tokens at given positions, encode images to latents, noise latents, predict with the UNet (and
know what the prediction should be: ε, v or x₀), and sample an image from a prompt embedding.
SDXL, with its two text encoders, will be a second implementation of the same interface.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from .errors import DiffinvError
from .text_slots import replaced_token_embeddings, slot_token_ids


class StableDiffusionBackbone:
    """Frozen components of a `StableDiffusionPipeline` (SD 1.x / 2.x, ε- or v-prediction).

    Args:
        pipe: the pipeline; its modules are frozen (`requires_grad_(False)`, eval mode).
        model_id: the hub id or directory it came from, recorded in token files.
    """

    def __init__(self, pipe: StableDiffusionPipeline, model_id: str):
        self.pipe = pipe
        self.model_id = model_id
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        self.vae = pipe.vae
        self.unet = pipe.unet
        # Training-time noising follows the model's own schedule (betas, prediction type), as in
        # diffusers' training scripts, whatever sampler the pipeline ships with.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)
            module.eval()
        self._img2img: StableDiffusionImg2ImgPipeline | None = None

    @classmethod
    def from_pretrained(
        cls, model: str, device: str | torch.device, dtype: torch.dtype, local_files_only: bool = False, **kwargs
    ) -> StableDiffusionBackbone:
        """Load a Stable Diffusion 1.x / 2.x pipeline by hub id or local directory.

        local_files_only: use the hub cache only, never the network."""
        pipe = StableDiffusionPipeline.from_pretrained(
            model, torch_dtype=dtype, local_files_only=local_files_only, **kwargs
        )
        pipe.to(device)
        return cls(pipe, model)

    # --- facts about the model -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def token_width(self) -> int:
        """Width d of one token embedding (768 for SD 1.x, 1024 for SD 2.x)."""
        return self.text_encoder.get_input_embeddings().embedding_dim

    @property
    def vocabulary(self) -> torch.Tensor:
        """(V, d) token-embedding matrix of the text encoder."""
        return self.text_encoder.get_input_embeddings().weight

    @property
    def sequence_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor × UNet downsampling, and of 8, which
        diffusers' text-to-image pipeline requires whatever the model (64 for SD 1.x / 2.x)."""
        return math.lcm(self.pipe.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1), 8)

    @property
    def native_resolution(self) -> int:
        return self.unet.config.sample_size * self.pipe.vae_scale_factor

    # --- text ------------------------------------------------------------------------------
    def slot_ids(self, prompts: list[str], n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, slot_mask), both (B, L), for `prompts` followed by `n_slots` DIFF-token slots."""
        ids, mask = slot_token_ids(self.tokenizer, prompts, n_slots, self.sequence_length)
        return ids.to(self.device), mask.to(self.device)

    def encode_prompt(self, ids: torch.Tensor, slot_mask: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states (B, L, d) for `ids` with `diff` at the slots.

        diff: (B, n, d) — one signed D̃ per row — or (n, d) shared by all rows.
        """
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = (ids != self.tokenizer.pad_token_id).long()
        with replaced_token_embeddings(self.text_encoder, slot_mask, diff):
            return self.text_encoder(ids, attention_mask=attention_mask).last_hidden_state

    def encode_plain(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states (B, L, d) of plain prompts, as the pipeline encodes them."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.sequence_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state

    # --- latents and the denoiser ------------------------------------------------------------
    def to_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] from same-sized RGB images."""
        processed = self.pipe.image_processor.preprocess(images)
        return processed.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Scaled VAE latents (B, C, H/f, W/f): the posterior mean × the VAE's scaling factor.

        The mean, not a sample: SD's VAE posterior is nearly deterministic, and fixed latents
        let Algorithm 1 encode A and A′ once instead of every step.
        """
        latents = self.vae.encode(self.to_pixels(images)).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(z_t | z_0): the forward process at integer `timesteps` (B,)."""
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    def loss_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to output: ε, v = α_t ε − σ_t z_0, or z_0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        if self.prediction_type == "sample":
            return latents
        raise DiffinvError(f"unsupported prediction type {self.prediction_type!r}")

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """UNet output (B, C, h, w) for noisy latents, integer timesteps (B,) and text states (B, L, d)."""
        return self.unet(noisy, timesteps, encoder_hidden_states=text_states).sample

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        text_states: torch.Tensor,
        size: tuple[int, int],
        *,
        init_image: Image.Image | None,
        strength: float,
        guidance_scale: float,
        steps: int,
        generator: torch.Generator,
        progress: bool = True,
    ) -> Image.Image:
        """Draw one image of `size` (width, height) conditioned on `text_states` (1, L, d).

        With `init_image` (already at `size`), SDEdit from it at `strength`; else from noise.
        Classifier-free guidance uses the empty prompt as the unconditional branch.
        """
        width, height = size
        common = dict(
            prompt_embeds=text_states.to(self.dtype),
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=generator,
        )
        if init_image is None:
            pipe = self.pipe
            pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
            return pipe(height=height, width=width, **common).images[0]
        if self._img2img is None:
            self._img2img = StableDiffusionImg2ImgPipeline(
                **self.pipe.components, requires_safety_checker=self.pipe.config.requires_safety_checker
            )
        pipe = self._img2img
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
        return pipe(image=init_image, strength=strength, **common).images[0]
