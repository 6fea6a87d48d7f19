"""SDEdit (Meng et al., ICLR 2022) as the paper's text-given reference "SDEdit*".

B is noised part of the way (`strength`) and denoised by a text-to-image Stable Diffusion model
conditioned on a text that describes the wanted B′ — words the user must supply; A and A′ are
not looked at. This is diffusers' `StableDiffusionImg2ImgPipeline` with its defaults.

    sdedit = SDEdit.from_pretrained("stabilityai/stable-diffusion-2-1")
    b_prime = sdedit.analogy(a, a_prime, b, text="a photo of a snowy castle", seed=0)

Choices and where they come from:
- strength 0.8, 50 steps, guidance 7.5, η = 0: diffusers' img2img defaults. SDEdit's paper has
  no single noise level for all edits (it trades faithfulness to B against realism).
- Sampler: DDIM (η = 0) on the model's noise schedule, whatever scheduler the model ships with,
  so that the number of UNet calls is exactly `min(int(steps × strength), steps)` for every
  model. SDEdit's paper integrates the reverse SDE (stochastic); `eta=1` gives DDIM's
  stochastic, DDPM-like variant.
- Size: B at the project's working size (aspect kept, area about the model's native size²),
  as Difference Inversion draws its B′.
- Model: Stable Diffusion 2.1 by default, the paper's backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from .base import Img2ImgSettings, TextEditBaseline, check_resolution_option, check_unet_channels, with_ddim

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1"


@dataclass(frozen=True)
class SDEditConfig(Img2ImgSettings):
    """Hyperparameters of SDEdit* (diffusers' img2img defaults).

    strength: fraction of the noise schedule B is noised to before denoising, in (0, 1];
        1 ignores B entirely. Default 0.8.
    steps: DDIM steps of a full schedule; `min(int(steps × strength), steps)` of them are run
        (at least one). Default 50.
    guidance_scale: classifier-free guidance on the prompt (≤ 1: none). Default 7.5.
    eta: DDIM's η (0 deterministic given the start noise, 1 DDPM-like). Default 0.
    resolution: side of the square whose area B is resized to (None: the model's native size).
    """

    strength: float = 0.8
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    resolution: int | None = None

    def __post_init__(self):
        self.check_img2img()
        check_resolution_option(self.resolution)


class SDEdit(TextEditBaseline):
    """SDEdit*: B′ = img2img(B, text describing B′).

    Args:
        pipe: a text-to-image Stable Diffusion pipeline (`StableDiffusionImg2ImgPipeline`, or a
            `StableDiffusionPipeline` whose modules are shared). It is not changed: sampling uses
            a pipeline of the same modules with a DDIM scheduler on the model's noise schedule.
        config: hyperparameters (default `SDEditConfig()`).
    """

    name = "SDEdit"
    needs_text = "b_prime"
    text_role = "SDEdit's prompt (a text describing the wanted B′)"
    pipeline_class = StableDiffusionImg2ImgPipeline  # a Stable Diffusion 1.x / 2.x model
    default_model = DEFAULT_MODEL
    config_class = SDEditConfig

    def __init__(
        self, pipe: StableDiffusionImg2ImgPipeline | StableDiffusionPipeline, config: SDEditConfig | None = None
    ):
        check_unet_channels(pipe, pipe.vae.config.latent_channels, "SDEdit")
        self.pipe = with_ddim(pipe, StableDiffusionImg2ImgPipeline)
        self.config = config or SDEditConfig()

    def pipeline_arguments(self) -> dict:
        c = self.config
        return dict(strength=c.strength, num_inference_steps=c.steps, guidance_scale=c.guidance_scale, eta=c.eta)
