"""The one place that knows diffusers: Stable Diffusion 1.x / 2.x as a small interface.

Difference Inversion needs five things from a text-to-image model: encode a prompt with DIFF
tokens at given positions, encode images to latents, noise latents, predict with the UNet (and
know what the prediction should be: ε, v or x₀), and sample an image from a prompt embedding.
SDXL, with its two text encoders, is a second implementation of the same interface
(`backbone_xl.StableDiffusionXLBackbone`). Text states are opaque to the rest of diffinv: what
`encode_prompt` returns, `predict` and `sample` take.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from .errors import DiffinvError
from .shared_attention import sharing_self_attention
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
    takes_instructions = False  # True for an editor: the DIFF tokens are its whole instruction (backbone_editor)
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
        *,
        init_image: Image.Image | None,
        strength: float,
        guidance_scale: float,
        steps: int,
        generator: torch.Generator,
        progress: bool = True,
        negative_states: torch.Tensor | None = None,
        invert_states: torch.Tensor | None = None,
        inversion: str = "ddim",
        share_attention: float = 0.0,
        edit_mask: float = 0.0,
        direct_inversion: bool = False,
    ) -> Image.Image:
        """Draw one image of `size` (width, height) conditioned on `text_states` (1, L, d).

        With `init_image` (already at `size`), SDEdit from it at `strength`; else from noise.
        Classifier-free guidance (guidance_scale > 1, as in diffusers) uses `negative_states`
        (1, L, d) as the unconditional branch, or the empty prompt when None.
        With `invert_states` (1, L, d) and `init_image`: no SDEdit noise but an inversion of
        `init_image` conditioned on `invert_states`, then denoising: `inversion` "ddim"
        (deterministic, `_from_inversion`; `generator` unused) or "edit-friendly"
        (`_from_edit_friendly_inversion`); `share_attention`, `edit_mask` and `direct_inversion`
        with "ddim": see `_from_inversion`.
        """
        if invert_states is not None:
            return self._from_inverted(
                inversion, text_states, init_image, invert_states, negative_states, strength, guidance_scale, steps,
                generator, progress, share_attention, edit_mask, direct_inversion,
            )  # fmt: skip
        width, height = size
        common = dict(
            prompt_embeds=text_states.to(self.dtype),
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=generator,
        )
        if negative_states is not None:
            common["negative_prompt_embeds"] = negative_states.to(self.dtype)
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

    def _from_inverted(
        self, inversion, text_states, init_image, invert_states, negative_states, strength, guidance_scale, steps,
        generator, progress, share_attention=0.0, edit_mask=0.0, direct_inversion=False,
    ) -> Image.Image:  # fmt: skip
        """`sample` from an inversion of `init_image`: `inversion` "ddim" or "edit-friendly"
        (`share_attention`, `edit_mask`, `direct_inversion`: DDIM only, see `_from_inversion`)."""
        if init_image is None:
            raise DiffinvError("inversion needs an image to invert")
        common = (text_states, init_image, invert_states, negative_states, strength, guidance_scale, steps)
        if inversion == "edit-friendly":
            if share_attention or edit_mask or direct_inversion:
                raise DiffinvError(
                    "attention sharing, the edit mask and direct inversion work with DDIM inversion only"
                )
            return self._from_edit_friendly_inversion(*common, generator, progress)
        if inversion != "ddim":
            raise DiffinvError(f"inversion must be 'ddim' or 'edit-friendly', got {inversion!r}")
        return self._from_inversion(*common, progress, share_attention, edit_mask, direct_inversion)

    def _ddim_config(self) -> dict:
        """The model's scheduler config for DDIM. DDIM and its inverse only space timesteps
        "leading" or "trailing"; another spacing (e.g. "linspace") is replaced by "leading"."""
        config = dict(self.pipe.scheduler.config)
        if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
            config["timestep_spacing"] = "leading"
        return config

    def _from_inversion(
        self,
        text_states: torch.Tensor,
        image: Image.Image,
        invert_states: torch.Tensor,
        negative_states: torch.Tensor | None,
        strength: float,
        guidance_scale: float,
        steps: int,
        progress: bool,
        share_attention: float = 0.0,
        edit_mask: float = 0.0,
        direct_inversion: bool = False,
    ) -> Image.Image:
        """Deterministic DDIM inversion of `image`, then DDIM denoising with guidance.

        Timesteps: those img2img at `strength` denoises with a DDIM scheduler of `steps` steps,
        the last k = int(steps × strength) of the schedule. The VAE posterior mean of `image`
        is carried up through them by diffusers' `DDIMInverseScheduler` (the model's betas and
        prediction type; at each step the UNet's conditional prediction on `invert_states`, i.e.
        guidance 1, evaluated at the current, lower noise level — the usual DDIM-inversion
        approximation), then brought back down by `DDIMScheduler` (η = 0) on the same
        timesteps with `text_states` and classifier-free guidance. With `text_states` =
        `invert_states` and guidance ≤ 1 the round trip reconstructs the latent of `image` up to
        that approximation. Costs k UNet calls for the inversion plus k (batch 2 when guided)
        for the denoising.

        share_attention: over the first round(k × share_attention) denoising steps, the
        reconstruction of `image` (under `invert_states`, guided alike) is denoised beside the
        drawing, in one batch, and the drawing's self-attention probabilities are the
        reconstruction's (`shared_attention`); those steps cost a batch twice as large.

        edit_mask > 0 (DiffEdit's mask and masked decoding, with the mask read off the inversion):
        each inversion step also predicts the noise under `text_states`, in the same batch; the
        mask (1, 1, h, w) is where the mean over channels of |ε(text_states) − ε(invert_states)|,
        summed over the steps, reaches `edit_mask` × its maximum. After every denoising step the
        latents outside the mask are replaced by the inversion's latents at that noise level (B's
        clean latent after the last step), so only the masked region is redrawn.

        direct_inversion (Direct Inversion, Ju et al., ICLR 2024): the reconstruction of `image` is
        denoised beside the drawing at every step, as for attention sharing; after each step the
        reconstruction's gap to the inversion path at that level — the error that guidance and the
        inversion's approximation made — is added to the drawing, and the reconstruction is put
        back on the path. With `text_states` = `invert_states` the drawing is B's latent exactly,
        at any guidance; otherwise it moves from B only as far as the text states move the
        predictions. The denoising batch doubles.
        """
        config = self._ddim_config()
        scheduler = DDIMScheduler.from_config(config)
        inverse = DDIMInverseScheduler.from_config(config)
        scheduler.set_timesteps(steps, device=self.device)
        inverse.set_timesteps(steps)  # its step size: num_train_timesteps // steps, as DDIM's
        timesteps = self._last_timesteps(scheduler, steps, strength)
        latents = self.encode_images([image]).to(self.dtype)
        invert_states = invert_states.to(self.dtype)
        states = self._guidance_states(text_states, negative_states, guidance_scale)
        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="inverting and sampling")
        path = [latents] if edit_mask or direct_inversion else None  # B's inversion path, clean latent first
        if edit_mask:  # where D̃ changes the prediction
            difference = torch.zeros_like(latents[:, :1])
            both_states = self.stack_states([invert_states, text_states.to(self.dtype)])
        with self.pipe.progress_bar(total=2 * len(timesteps)) as bar:
            for t in timesteps.flip(0):
                if edit_mask:
                    noise_pred, edited = self.predict(torch.cat([latents, latents]), t.expand(2), both_states).chunk(2)
                    difference += (edited - noise_pred).abs().mean(dim=1, keepdim=True)
                else:
                    noise_pred = self.predict(latents, t.expand(1), invert_states)
                latents = inverse.step(noise_pred, int(t), latents).prev_sample
                if path is not None:
                    path.append(latents)
                bar.update()
            mask = None
            if edit_mask:  # 1 where B′ is drawn; no difference at all (D̃ = 0) keeps all of B
                largest = difference.max()
                mask = (difference >= edit_mask * largest) & (largest > 0)
            shared_steps = round(len(timesteps) * share_attention)
            source_states = self._guidance_states(invert_states, negative_states, guidance_scale)
            source = latents  # B's reconstruction, denoised beside B′ while attention is shared or corrected
            with sharing_self_attention(self.unet) if shared_steps else nullcontext() as sharing:
                for i, t in enumerate(timesteps):
                    level = path[len(timesteps) - 1 - i] if path is not None else None  # B's path, one step down
                    if i < shared_steps or direct_inversion:
                        if sharing is not None:
                            sharing.active = i < shared_steps
                        both = torch.cat([source, latents])
                        both_states = self.stack_states([source_states, states])
                        noise_pred = self._guided_prediction(scheduler, both, t, both_states, guidance_scale)
                        source, latents = scheduler.step(noise_pred, int(t), both, eta=0.0).prev_sample.chunk(2)
                        if sharing is not None:
                            sharing.active = False
                        if direct_inversion:  # the reconstruction's error, taken out of B′ too
                            latents, source = latents + (level - source), level
                    else:
                        noise_pred = self._guided_prediction(scheduler, latents, t, states, guidance_scale)
                        latents = scheduler.step(noise_pred, int(t), latents, eta=0.0).prev_sample
                    if mask is not None:  # back on B's path outside the mask, at the level just reached
                        latents = torch.where(mask, latents, level)
                    bar.update()
        return self.decode_latents(latents)[0]

    def _from_edit_friendly_inversion(
        self,
        text_states: torch.Tensor,
        image: Image.Image,
        invert_states: torch.Tensor,
        negative_states: torch.Tensor | None,
        strength: float,
        guidance_scale: float,
        steps: int,
        generator: torch.Generator,
        progress: bool,
    ) -> Image.Image:
        """Edit-friendly DDPM inversion of `image` (Huberman-Spiegelglas, Kulikov & Michaeli,
        CVPR 2024), then DDPM denoising with `text_states` that adds its noise back.

        On the timesteps `_from_inversion` uses, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε_t is drawn for each
        t with its own noise ε_t from `generator` (x_0: the latent of `image`). The residual
        r_t = x_{t−1} − μ(x_t) is what takes the DDPM step (DDIM at η = 1) under `invert_states`,
        guided as the denoising is, exactly from x_t to x_{t−1}; the last step lands on x_0
        itself. Denoising then starts from the top x_t and adds r_t to each step's mean under
        `text_states`. With `text_states` = `invert_states` it gives back x_0 bit for bit,
        whatever the guidance; other states change the picture only as far as
        they change the means. Costs k UNet calls (batch 2 when guided) for the inversion and as
        many for the denoising, k = int(steps × strength).
        """
        scheduler = DDIMScheduler.from_config(self._ddim_config())
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = self._last_timesteps(scheduler, steps, strength)
        clean = self.encode_images([image]).to(self.dtype)
        noisy = [
            scheduler.add_noise(clean, torch.randn(clean.shape, generator=generator).to(clean), t.reshape(1))
            for t in timesteps
        ] + [clean]
        inversion_states = self._guidance_states(invert_states, negative_states, guidance_scale)
        states = self._guidance_states(text_states, negative_states, guidance_scale)

        def mean(latents: torch.Tensor, t: torch.Tensor, conditioning) -> torch.Tensor:
            prediction = self._guided_prediction(scheduler, latents, t, conditioning, guidance_scale)
            step = scheduler.step(prediction, int(t), latents, eta=1.0, variance_noise=torch.zeros_like(latents))
            return step.prev_sample

        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="inverting and sampling")
        with self.pipe.progress_bar(total=2 * len(timesteps)) as bar:
            inverted_means = []
            for i, t in enumerate(timesteps):
                inverted_means.append(mean(noisy[i], t, inversion_states))
                bar.update()
            latents = noisy[0]
            for i, t in enumerate(timesteps):
                # x_{t−1} + (μ − μ_inv) is μ + r_t, written so that equal means give x_{t−1} bit for bit
                latents = noisy[i + 1] + (mean(latents, t, states) - inverted_means[i])
                bar.update()
        return self.decode_latents(latents)[0]

    @staticmethod
    def _last_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
        """The last k = int(steps × strength) of `scheduler`'s timesteps (descending): those
        img2img at `strength` denoises."""
        return scheduler.timesteps[steps - min(int(steps * strength), steps) :]

    def _guidance_states(self, text_states, negative_states, guidance_scale: float):
        """`text_states` in the model's dtype, with the unconditional branch (`negative_states`,
        else the empty prompt's) stacked in front when guided (guidance_scale > 1)."""
        states = text_states.to(self.dtype)
        if guidance_scale <= 1:
            return states
        uncond = self.unconditional_states() if negative_states is None else negative_states
        return self.stack_states([uncond.to(self.dtype), states])

    def _guided_prediction(self, scheduler, latents, t, states, guidance_scale: float) -> torch.Tensor:
        """The UNet's predictions (n, C, h, w) for `latents` (n, C, h, w) at timestep `t`, row i
        under the i-th of n `_guidance_states` stacked in `states` (2n rows when guided, n
        otherwise), combined by classifier-free guidance when guided. The UNet's batch is the
        rows in order, each latent repeated for its two branches: [x₁, x₁, x₂, x₂, …]."""
        guided = guidance_scale > 1
        model_input = latents.repeat_interleave(2, dim=0) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        prediction = self.predict(model_input, t.expand(len(model_input)), states)
        if not guided:
            return prediction
        uncond_pred, cond_pred = prediction.view(len(latents), 2, *prediction.shape[1:]).unbind(1)
        return uncond_pred + guidance_scale * (cond_pred - uncond_pred)
