"""InstructPix2Pix (Brooks, Holynski & Efros, CVPR 2023) as the paper's text-given reference.

B is edited by an instruction-following diffusion model (diffusers'
`StableDiffusionInstructPix2PixPipeline`, `timbrooks/instruct-pix2pix` by default) given an
instruction in words, which the user must supply; A and A′ are not looked at.

    ip2p = InstructPix2Pix.from_pretrained()
    b_prime = ip2p.analogy(a, a_prime, b, text="make it snowy", seed=0)

Hyperparameters are those of the official command-line editor (`edit_cli.py` and the README of
github.com/timothybrooks/instruct-pix2pix): 100 Euler-ancestral steps, text guidance 7.5, image
guidance 1.2. (The official Gradio app starts at 50 steps and image guidance 1.5; diffusers'
pipeline defaults to 100 steps and 1.5.) Guidance is InstructPix2Pix's three-branch
classifier-free guidance: ε(∅, ∅) + s_I·(ε(∅, B) − ε(∅, ∅)) + s_T·(ε(text, B) − ε(∅, B)).

Deviations from the official editor:
- Size: the official script resizes B so that its longer side is about 512 with sides that are
  multiples of 64; here B gets the project's working size (aspect kept, area about 512²,
  multiples of the UNet's stride), as every method of this project does.
- Sampler: diffusers' `EulerAncestralDiscreteScheduler` (the hub model's own) instead of
  k-diffusion's `sample_euler_ancestral` on the same noise schedule; the noise comes from a
  seeded CPU generator instead of the global CUDA one.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

from ..model_card import DEFAULT_EDITOR
from .base import (
    Cost,
    TextEditBaseline,
    check_guidance,
    check_resolution_option,
    check_unet_channels,
    positive_int,
    require,
    with_scheduler,
)

DEFAULT_MODEL = DEFAULT_EDITOR


def check_instruct_guidance(guidance_scale, image_guidance_scale, steps) -> None:
    require(positive_int(steps), f"the number of sampling steps must be a positive integer, got {steps!r}")
    check_guidance(guidance_scale)
    check_guidance(image_guidance_scale, "image_guidance_scale")


def instruct_batch(guidance_scale: float, image_guidance_scale: float) -> int:
    """Latents per UNet call: 3 with InstructPix2Pix's guidance (text and image, image only,
    neither), which diffusers applies when guidance_scale > 1 and image_guidance_scale ≥ 1."""
    return 3 if guidance_scale > 1 and image_guidance_scale >= 1 else 1


def euler_ancestral(pipe: StableDiffusionInstructPix2PixPipeline) -> StableDiffusionInstructPix2PixPipeline:
    """`pipe`'s modules with an Euler-ancestral scheduler on its noise schedule (the sampler of
    InstructPix2Pix's and VISII's official code)."""
    return with_scheduler(pipe, EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config))


@dataclass(frozen=True)
class InstructPix2PixConfig:
    """Hyperparameters of InstructPix2Pix* (the official `edit_cli.py` defaults).

    steps: Euler-ancestral sampling steps. Default 100.
    guidance_scale: text guidance s_T. Default 7.5.
    image_guidance_scale: image guidance s_I. Default 1.2.
    resolution: side of the square whose area B is resized to (None: the model's native size).
    """

    steps: int = 100
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.2
    resolution: int | None = None

    def __post_init__(self):
        check_instruct_guidance(self.guidance_scale, self.image_guidance_scale, self.steps)
        check_resolution_option(self.resolution)

    def cost(self) -> Cost:
        return Cost(
            sample_calls=self.steps, sample_batch=instruct_batch(self.guidance_scale, self.image_guidance_scale)
        )


class InstructPix2Pix(TextEditBaseline):
    """InstructPix2Pix*: B′ = edit(B, instruction).

    Args:
        pipe: an InstructPix2Pix pipeline (UNet with 8 input channels). It is not changed:
            sampling uses a pipeline of the same modules with an Euler-ancestral scheduler.
        config: hyperparameters (default `InstructPix2PixConfig()`).
    """

    name = "InstructPix2Pix"
    needs_text = "instruction"
    text_role = "InstructPix2Pix's instruction"
    pipeline_class = StableDiffusionInstructPix2PixPipeline
    default_model = DEFAULT_MODEL
    config_class = InstructPix2PixConfig

    def __init__(self, pipe: StableDiffusionInstructPix2PixPipeline, config: InstructPix2PixConfig | None = None):
        check_unet_channels(pipe, 2 * pipe.vae.config.latent_channels, "InstructPix2Pix")
        self.pipe = euler_ancestral(pipe)
        self.config = config or InstructPix2PixConfig()

    def pipeline_arguments(self) -> dict:
        c = self.config
        return dict(
            num_inference_steps=c.steps, guidance_scale=c.guidance_scale, image_guidance_scale=c.image_guidance_scale
        )
