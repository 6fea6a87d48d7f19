"""Stable Diffusion 1.x / 2.x as the small interface Difference Inversion runs on.

Difference Inversion needs five things from a text-to-image model: encode a prompt with DIFF
tokens at given positions, encode images to latents, noise latents, predict with the UNet (and
know what the prediction should be: ε, v or x₀), and sample an image from a prompt embedding.
SDXL, with its two text encoders, is a second implementation of the same interface
(`sdxl.StableDiffusionXLBackbone`), an instruction editor a third (`editor`). Text states are
opaque to the rest of diffinv: what `encode_prompt` returns, `predict` and `sample` take.
`sample` draws from noise or by SDEdit through diffusers' pipelines, and from an inversion of B
through `diffinv.sampling`, which is written against this interface.
"""

from __future__ import annotations

import math
import warnings

import torch
from diffusers import DDPMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

# The module, not its names: `sampling` is built on this interface and imports this package, so
# its functions are looked up when `sample` runs, whichever of the two was imported first.
from .. import sampling
from ..config import DrawSettings, check_sampling_mode
from ..errors import DiffinvError
from .text_slots import replaced_token_embeddings, slot_token_ids, token_attention_mask


def pipeline_from_pretrained(pipeline_class, model: str, dtype: torch.dtype, **kwargs):
    """`pipeline_class.from_pretrained(model, …)` in `dtype`. The argument is passed as
    `torch_dtype`, which every diffusers version this project admits reads; recent versions call
    it `dtype` and warn about the old name, a warning meant for us, not for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        return pipeline_class.from_pretrained(model, torch_dtype=dtype, **kwargs)


class StableDiffusionBackbone:
    """Frozen components of a `StableDiffusionPipeline` (SD 1.x / 2.x, ε- or v-prediction).

    Args:
        pipe: the pipeline; its modules are frozen (`requires_grad_(False)`, eval mode).
        model_id: the hub id or directory it came from, recorded in token files.
    """

    family = "sd"  # recorded in token files; tokens of one family cannot condition another
    encoder_widths: tuple[int, ...] | None = None  # one text encoder: its width is `token_width`
    takes_instructions = False  # True for an editor: the DIFF tokens are its whole instruction (`editor`)
    pipeline_class = StableDiffusionPipeline  # what `from_pretrained` loads

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
        # Low memory on CUDA (`diffinv.memory.stage_offload`): the models wait on the CPU until used,
        # and what the backbone makes is made on `execution_device`.
        self.offload = None
        self.execution_device: torch.device | None = None

    @classmethod
    def from_pretrained(
        cls, model: str, device: str | torch.device, dtype: torch.dtype, local_files_only: bool = False, **kwargs
    ) -> StableDiffusionBackbone:
        """Load the backbone's `pipeline_class` (SD 1.x / 2.x here) by hub id or local directory.

        local_files_only: use the hub cache only, never the network."""
        pipe = pipeline_from_pretrained(cls.pipeline_class, model, dtype, local_files_only=local_files_only, **kwargs)
        pipe.to(device)
        return cls(pipe, model)

    # --- facts about the model -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the backbone computes: the UNet's device, or the offload's device when offloaded."""
        return self.execution_device or self.unet.device

    def _text_weights_on_device(self) -> None:
        """Under model CPU offload, the text encoders' weights are read directly (the vocabulary): bring them."""
        if self.offload is not None:
            self.offload.enter("text")

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
        self._text_weights_on_device()
        return self.text_encoder.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return self.text_encoder.get_input_embeddings().num_embeddings

    @property
    def clip_vocabulary(self) -> torch.Tensor:
        """(V, d_clip) token embeddings of the text encoder that CLIP's text tower must match: the
        CLIP loss sees the columns `clip_dims` of D̃ through that tower (here all of them)."""
        return self.vocabulary

    @property
    def clip_dims(self) -> slice:
        """The columns of a DIFF token (…, d) that go into CLIP's text tower."""
        return slice(None)

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

        diff: (B, n, d) — one signed D̃ per row — or (n, d) shared by all rows. A text encoder
        whose config sets `use_attention_mask` gets the tokenizer's mask, as diffusers' pipeline
        gives it (1 up to and including `<eos>`, also where the pad id is the `<eos>` id).
        """
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = token_attention_mask(self.tokenizer, ids)
        with replaced_token_embeddings(self.text_encoder, slot_mask, diff):
            return self.text_encoder(ids, attention_mask=attention_mask).last_hidden_state

    def unconditional_states(self) -> torch.Tensor:
        """The unconditional branch of classifier-free guidance as the pipeline makes it when no
        negative prompt is given: the empty prompt's states (1, L, d)."""
        return self.encode_plain([""])

    @staticmethod
    def stack_states(states: list[torch.Tensor]) -> torch.Tensor:
        """Text states of several batches as one batch, in order."""
        return torch.cat(states)

    def encode_plain(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states (B, L, d) of plain prompts, as the pipeline encodes them."""
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.sequence_length, truncation=True, return_tensors="pt"
        )
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):  # as diffusers' pipeline does
            attention_mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=attention_mask).last_hidden_state

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

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """Images from scaled latents (B, C, h, w)."""
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return self.pipe.image_processor.postprocess(decoded, output_type="pil")

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

    def pair_conditioning(self, latents: torch.Tensor) -> torch.Tensor | None:
        """What L_tc's UNet calls take besides the text, for latents (2K, C, h, w) = (z_A, z_A′) of
        K pairs: nothing for a text-to-image model (an editor's: the images edited from)."""
        return None

    def predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor, image_latents: None = None
    ) -> torch.Tensor:
        """UNet output (B, C, h, w) for noisy latents, integer timesteps (B,) and text states (B, L, d).
        image_latents: what `pair_conditioning` gives, None for a text-to-image model."""
        return self.unet(noisy, timesteps, encoder_hidden_states=text_states).sample

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        text_states: torch.Tensor,
        size: tuple[int, int],
        init_image: Image.Image | None,
        settings: DrawSettings,
        generator: torch.Generator,
        progress: bool = True,
        negative_states: torch.Tensor | None = None,
        invert_states: torch.Tensor | None = None,
    ) -> Image.Image:
        """Draw one image of `size` (width, height) conditioned on `text_states` (1, L, d), as `settings` say.

        init_image: B, already at `size`; not read in mode "noise". Modes: "noise" draws from
        noise; "img2img" SDEdits from `init_image` at `settings.strength`; the inversion modes
        invert `init_image` under `invert_states` (1, L, d) and denoise from there
        (`sampling.from_inversion`: "inversion" is DDIM's, deterministic, `generator` unused;
        "edit-friendly" DDPM's). Classifier-free guidance (guidance_scale > 1, as in diffusers)
        uses `negative_states` (1, L, d) as the unconditional branch, or the empty prompt when
        None. Refused, one line each: mode "editor" (an instruction editor's), and attention
        sharing, the edit mask or direct inversion outside mode "inversion".
        """
        check_sampling_mode(settings.mode, self.model_id, self.takes_instructions)
        if settings.inversion is not None:
            return sampling.from_inversion(
                self, text_states, init_image, invert_states, negative_states, settings, generator, progress
            )
        sampling.check_inversion_options(settings)
        width, height = size
        common = dict(
            prompt_embeds=text_states.to(self.dtype),
            guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.steps,
            generator=generator,
        )
        if negative_states is not None:
            common["negative_prompt_embeds"] = negative_states.to(self.dtype)
        if settings.mode == "noise":
            pipe = self.pipe
            pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
            return pipe(height=height, width=width, **common).images[0]
        if init_image is None:
            raise DiffinvError("img2img draws B′ from B: it needs the image")
        if self._img2img is None:
            self._img2img = StableDiffusionImg2ImgPipeline(
                **self.pipe.components, requires_safety_checker=self.pipe.config.requires_safety_checker
            )
        pipe = self._img2img
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
        return pipe(image=init_image, strength=settings.strength, **common).images[0]
