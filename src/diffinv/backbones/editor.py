"""An instruction-editing model (InstructPix2Pix) as a Difference Inversion backbone.

Beyond the paper. A text-to-image model draws B′ from a description of B plus the DIFF tokens,
and must then be made to keep B (inversion, attention sharing, masks — docs/results.md §7). An
instruction editor sees B's pixels instead: its UNet takes the noisy latent and the latent of
the image being edited (8 channels), and its text is an instruction. Here the DIFF tokens are
that instruction, {"", D̃}, with no words beside them, and Algorithm 1 runs on the editor:

- L_tc, both of the paper's branches: z_A′,t denoised with the image A and {"", +D̃} (A edited
  into A′), z_A,t with the image A′ and {"", −D̃} (A′ edited back into A). Content of A that D̃
  carries along cannot help the second branch, whose image already has it and whose tokens are
  negated. (`pair_conditioning`.)
- L_clip: unchanged, on the same text encoder (InstructPix2Pix keeps its base model's).
- B′: the editor on B with {"", s·D̃}, InstructPix2Pix's three-branch guidance, Euler-ancestral
  sampling from noise (`sampling_mode="editor"`, `sample`).

Everything else is the text-to-image backbone's: tokenizer, text encoder, VAE, noise schedule.
A published editor shares its base model's text encoder (timbrooks/instruct-pix2pix: SD 1.5's),
so tokens fitted here condition that base model too, and the reverse.
"""

from __future__ import annotations

import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from ..config import DrawSettings, check_sampling_mode
from ..errors import DiffinvError
from .sd import StableDiffusionBackbone


class InstructPix2PixBackbone(StableDiffusionBackbone):
    """Frozen components of a `StableDiffusionInstructPix2PixPipeline` (ε-prediction, 8-channel UNet).

    Args:
        pipe: the pipeline; its modules are frozen. Sampling uses a pipeline of the same modules
            with an Euler-ancestral scheduler (InstructPix2Pix's sampler); `pipe` is left as it was.
        model_id: the hub id or directory it came from, recorded in token files.
    """

    takes_instructions = True  # the DIFF tokens are the whole text: {"", ±D̃}, no prompt beside them
    pipeline_class = StableDiffusionInstructPix2PixPipeline

    def __init__(self, pipe: StableDiffusionInstructPix2PixPipeline, model_id: str):
        latent_channels = pipe.vae.config.latent_channels
        if pipe.unet.config.in_channels != 2 * latent_channels:
            raise DiffinvError(
                f"{model_id}: an instruction editor's UNet takes {2 * latent_channels} input channels (the noisy "
                f"latent and the image's), this one {pipe.unet.config.in_channels}"
            )
        super().__init__(pipe, model_id)
        components = {
            **pipe.components,
            "scheduler": EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config),
        }
        self._sampler = StableDiffusionInstructPix2PixPipeline(**components)

    # --- the denoiser ------------------------------------------------------------------------
    def pair_conditioning(self, latents: torch.Tensor) -> torch.Tensor:
        """The image each row of L_tc is edited from, as the UNet's extra channels (2K, C, h, w),
        for latents (2K, C, h, w) = (z_A, z_A′) of K pairs: z_A is denoised from the image A′,
        z_A′ from A. The pipeline's image latents are the VAE's unscaled posterior mode (= mean)."""
        swapped = latents.unflatten(0, (-1, 2)).flip(1).flatten(0, 1)
        return swapped / self.vae.config.scaling_factor

    def predict(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text_states: torch.Tensor,
        image_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """UNet output (B, C, h, w) for noisy latents (B, C, h, w), integer timesteps (B,), text
        states (B, L, d) and the latents of the images being edited (B, C, h, w; `pair_conditioning`)."""
        if image_latents is None:
            raise DiffinvError("an instruction editor predicts only with the image it edits (image_latents)")
        return super().predict(torch.cat([noisy, image_latents.to(noisy.dtype)], dim=1), timesteps, text_states)

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
        """B′: `init_image` (B, already at `size`) edited by the instruction `text_states` (1, L, d).

        Euler-ancestral steps from noise with InstructPix2Pix's guidance, ε(∅, ∅) + s_I·(ε(∅, B) −
        ε(∅, ∅)) + s_T·(ε(text, B) − ε(∅, B)), with ∅ the empty prompt or `negative_states`,
        s_T = `settings.guidance_scale`, s_I = `settings.image_guidance_scale`. `settings.strength`
        is not read: the editor starts from pure noise whatever B's noise level would be. Refused:
        every mode but "editor" (so no inversion: `invert_states` must be None), and attention
        sharing, the edit mask and direct inversion, which need an inversion of B.
        """
        check_sampling_mode(settings.mode, self.model_id, self.takes_instructions)
        if settings.share_attention or settings.edit_mask or settings.direct_inversion or invert_states is not None:
            raise DiffinvError(
                f"{self.model_id} is an instruction editor: it draws from noise with B as its condition, with no "
                "inversion of B, so attention sharing, the edit mask and direct inversion do not apply"
            )
        if init_image is None:
            raise DiffinvError("an instruction editor draws B′ from B: it needs the image")
        call = dict(
            image=init_image,
            prompt_embeds=text_states.to(self.dtype),
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            image_guidance_scale=settings.image_guidance_scale,
            generator=generator,
        )
        if negative_states is not None:
            call["negative_prompt_embeds"] = negative_states.to(self.dtype)
        self._sampler.set_progress_bar_config(disable=not progress, leave=False, desc="editing")
        return self._sampler(**call).images[0]
